//! HTTP/1.1 on the bytes the connection owns: parsing, framing, responses, dates, errors.

pub mod date;
pub mod error;
pub(crate) mod fast;
pub mod parse;
pub mod percent;
pub mod response;

pub use error::{ApiError, HttpError};
pub use parse::{Framing, Head, Limits, Version};
pub use response::{Persistence, Response};
