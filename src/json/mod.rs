//! TEMPORARY STUB
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JsonError { #[error("{0}")] Bad(String) }
#[derive(Debug, Clone)]
pub struct FieldMask(String);
impl FieldMask {
    pub fn parse(list: &str) -> Result<Self, JsonError> { Ok(Self(list.to_owned())) }
    pub fn canonical(&self) -> &str { &self.0 }
    pub fn project(&self, doc: &[u8], _s: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), JsonError> { out.extend_from_slice(doc); Ok(()) }
}
pub fn parse_document(body: &[u8], _s: &mut Vec<u8>) -> Result<Vec<u8>, JsonError> { Ok(body.to_vec()) }
pub fn merge_patch(_t: Option<&[u8]>, patch: &[u8], _s: &mut Vec<u8>) -> Result<Vec<u8>, JsonError> { Ok(patch.to_vec()) }
pub fn write_json_string(s: &str, out: &mut Vec<u8>) { out.push(b'"'); out.extend_from_slice(s.as_bytes()); out.push(b'"'); }
