//! Routing by method and path, with `:name` path parameters, without allocating on a match.

/// At most this many parameters in one pattern.
pub const MAX_PARAMS: usize = 4;

/// Path parameters of a match: names from the pattern, values borrowed from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'p> {
    items: [(&'static str, &'p str); MAX_PARAMS],
    len: usize,
}

impl<'p> Params<'p> {
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.items[..self.len]
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

#[derive(Debug, Clone)]
struct Route<H> {
    method: &'static str,
    /// The whole pattern when it has no parameters: matched with one comparison.
    literal: Option<&'static str>,
    segments: Vec<Segment>,
    handler: H,
    /// An operator's call (metrics, dead letters, redrive): served on the
    /// admin listener alone when there is one.
    operator: bool,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub enum Match<'r, 'p, H> {
    Found {
        /// Index of the route, stable for the router's life (used for metrics).
        index: usize,
        handler: &'r H,
        params: Params<'p>,
    },
    /// The path exists, but not for this method; `allow` lists the methods that are.
    MethodNotAllowed {
        allow: String,
    },
    NotFound,
}

/// A route table. `GET` routes answer `HEAD` too; the first route
/// registered that matches a request wins.
#[derive(Debug, Clone)]
pub struct Router<H> {
    routes: Vec<Route<H>>,
    patterns: Vec<&'static str>,
}

impl<H> Default for Router<H> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

impl<H> Router<H> {
    /// Adds a route. Panics on a malformed pattern: patterns are written in code.
    pub fn add(&mut self, method: &'static str, pattern: &'static str, handler: H) -> &mut Self {
        assert!(
            pattern.starts_with('/'),
            "route pattern {pattern:?} must start with /"
        );
        let segments: Vec<Segment> = pattern[1..]
            .split('/')
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name),
                None => Segment::Literal(s),
            })
            .collect();
        let params = segments
            .iter()
            .filter(|s| matches!(s, Segment::Param(_)))
            .count();
        assert!(
            params <= MAX_PARAMS,
            "route {pattern:?} has more than {MAX_PARAMS} parameters"
        );
        self.routes.push(Route {
            method,
            literal: (params == 0).then_some(pattern),
            segments,
            handler,
            operator: false,
        });
        self.patterns.push(pattern);
        self
    }

    /// Marks the route added last as an operator's call.
    pub fn mark_operator(&mut self) -> &mut Self {
        if let Some(route) = self.routes.last_mut() {
            route.operator = true;
        }
        self
    }

    /// Whether route `index` is an operator's call.
    pub fn is_operator(&self, index: usize) -> bool {
        self.routes.get(index).is_some_and(|r| r.operator)
    }

    /// Every route as `(method, pattern)`, in the order they were added.
    pub fn routes(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.routes
            .iter()
            .zip(&self.patterns)
            .map(|(r, p)| (r.method, *p))
    }

    /// The routes that are not operator calls, as [`Self::routes`] lists them.
    pub fn public_routes(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.routes
            .iter()
            .zip(&self.patterns)
            .filter(|(r, _)| !r.operator)
            .map(|(r, p)| (r.method, *p))
    }

    /// The pattern of route `index`, e.g. `/v1/:collection/:key`.
    pub fn pattern(&self, index: usize) -> &'static str {
        self.patterns[index]
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn route<'r, 'p>(&'r self, method: &str, path: &'p str) -> Match<'r, 'p, H> {
        let mut path_matched = false;
        for (index, route) in self.routes.iter().enumerate() {
            let params = match route.literal {
                Some(literal) if literal == path => Params::default(),
                Some(_) => continue,
                None => match match_segments(&route.segments, path) {
                    Some(params) => params,
                    None => continue,
                },
            };
            if route.method == method || (method == "HEAD" && route.method == "GET") {
                return Match::Found {
                    index,
                    handler: &route.handler,
                    params,
                };
            }
            path_matched = true;
        }
        if !path_matched {
            return Match::NotFound;
        }
        let mut allow: Vec<&str> = Vec::new();
        for route in &self.routes {
            if match_segments(&route.segments, path).is_some() {
                allow.push(route.method);
                if route.method == "GET" {
                    allow.push("HEAD");
                }
            }
        }
        allow.sort_unstable();
        allow.dedup();
        Match::MethodNotAllowed {
            allow: allow.join(", "),
        }
    }
}

fn match_segments<'p>(segments: &[Segment], path: &'p str) -> Option<Params<'p>> {
    let mut params = Params::default();
    let mut parts = path.strip_prefix('/')?.split('/');
    for segment in segments {
        let part = parts.next()?;
        match segment {
            Segment::Literal(literal) if *literal == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(_) if part.is_empty() => return None,
            Segment::Param(name) => {
                params.items[params.len] = (name, part);
                params.len += 1;
            }
        }
    }
    parts.next().is_none().then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<u8> {
        let mut r = Router::default();
        r.add("GET", "/json", 1)
            .add("GET", "/v1/:collection/:key", 2)
            .add("PUT", "/v1/:collection/:key", 3)
            .add("POST", "/echo", 4);
        r
    }

    #[test]
    fn static_and_param_routes() {
        let r = router();
        assert!(matches!(
            r.route("GET", "/json"),
            Match::Found { handler: 1, .. }
        ));
        match r.route("PUT", "/v1/items/42") {
            Match::Found {
                handler,
                params,
                index,
            } => {
                assert_eq!((*handler, index), (3, 2));
                assert_eq!(params.get("collection"), Some("items"));
                assert_eq!(params.get("key"), Some("42"));
                assert_eq!(params.get("nope"), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn head_follows_get() {
        assert!(matches!(
            router().route("HEAD", "/json"),
            Match::Found { handler: 1, .. }
        ));
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let r = router();
        assert!(matches!(r.route("GET", "/jsonx"), Match::NotFound));
        assert!(matches!(r.route("GET", "/v1/items"), Match::NotFound));
        assert!(matches!(r.route("GET", "/v1/items/"), Match::NotFound));
        assert!(matches!(r.route("GET", "/v1/items/1/2"), Match::NotFound));
        match r.route("DELETE", "/v1/items/1") {
            Match::MethodNotAllowed { allow } => assert_eq!(allow, "GET, HEAD, PUT"),
            other => panic!("{other:?}"),
        }
        match r.route("GET", "/echo") {
            Match::MethodNotAllowed { allow } => assert_eq!(allow, "POST"),
            other => panic!("{other:?}"),
        }
    }
}
