//! Endpoint tables and path matching, shared by every listener.
//!
//! A listener lists its endpoints once, as a slice of [`Route`]s (method,
//! path pattern, who may call it, body limit, endpoint); [`find`] picks the
//! row for a request or says why none fits: no such path (404) or not this
//! method (405, with the methods that are allowed).

use http::Method;

/// How large a request body an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// No body is read (GET and DELETE endpoints).
    Empty,
    /// The listener's configured limit (`[limits] max_body_bytes`).
    Configured,
    /// A fixed, smaller limit (people endpoints taking a small JSON object).
    Bytes(u64),
}

impl BodyLimit {
    /// The most bytes accepted, given the listener's configured limit.
    pub fn max_bytes(self, configured: u64) -> u64 {
        match self {
            BodyLimit::Empty => 0,
            BodyLimit::Configured => configured,
            BodyLimit::Bytes(n) => n.min(configured),
        }
    }
}

/// One row of a listener's endpoint table.
#[derive(Debug)]
pub struct Route<E: 'static, C: 'static> {
    /// The HTTP method.
    pub method: Method,
    /// The path pattern: literal segments and `{name}` placeholders, e.g.
    /// `/v1/queries/{id}`.
    pub path: &'static str,
    /// Who may call it (the listener's own notion of a caller).
    pub caller: C,
    /// The largest body it takes.
    pub body: BodyLimit,
    /// The endpoint that serves it.
    pub endpoint: E,
}

/// The placeholder values of a matched path, in pattern order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of placeholder `name`, or "" when the pattern has none
    /// (the table and the endpoint are written together, so that is a bug
    /// the endpoint's tests find).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Why no row fits a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No row has this path.
    NotFound,
    /// Rows have this path, but not with this method.
    MethodNotAllowed(Vec<Method>),
}

/// The row of `table` for `method` and `path`, with its placeholder values.
pub fn find<'t, E, C>(
    table: &'t [Route<E, C>],
    method: &Method,
    path: &str,
) -> Result<(&'t Route<E, C>, Params), Miss> {
    let mut allowed = Vec::new();
    for route in table {
        let Some(params) = matches(route.path, path) else {
            continue;
        };
        if route.method == *method {
            return Ok((route, params));
        }
        allowed.push(route.method.clone());
    }
    if allowed.is_empty() {
        Err(Miss::NotFound)
    } else {
        Err(Miss::MethodNotAllowed(allowed))
    }
}

fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut want = pattern.trim_start_matches('/').split('/');
    let mut got = path.trim_start_matches('/').split('/');
    let mut params = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(Params(params)),
            (Some(w), Some(g)) => {
                if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if g.is_empty() {
                        return None;
                    }
                    params.push((name, g.to_string()));
                } else if w != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Checks a listener's table (tests): every row is found by its own method
/// and path, and every endpoint has one metrics name of its own.
#[cfg(test)]
pub(crate) fn assert_well_formed<E: PartialEq + std::fmt::Debug + Copy, C>(
    table: &[Route<E, C>],
    name: fn(E) -> &'static str,
) {
    let mut names = std::collections::BTreeSet::new();
    for route in table {
        assert!(names.insert(name(route.endpoint)), "{:?}", route.endpoint);
        let (found, _) = find(table, &route.method, route.path).expect("row found");
        assert_eq!(found.endpoint, route.endpoint);
    }
}

/// Checks (tests) that the rows under `prefix` are exactly the endpoints
/// the published contract lists.
#[cfg(test)]
pub(crate) fn assert_published<E, C>(
    table: &[Route<E, C>],
    prefix: &str,
    published: &[kakehashi_interfaces::schema::Endpoint],
) {
    let served: std::collections::BTreeSet<(String, &str)> = table
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    let listed: std::collections::BTreeSet<(String, &str)> = published
        .iter()
        .map(|e| (e.method.to_string(), e.path))
        .collect();
    assert_eq!(served, listed);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[Route<&str, ()>] = &[
        Route {
            method: Method::GET,
            path: "/v1/queries/{id}",
            caller: (),
            body: BodyLimit::Empty,
            endpoint: "get",
        },
        Route {
            method: Method::POST,
            path: "/v1/queries",
            caller: (),
            body: BodyLimit::Configured,
            endpoint: "post",
        },
        Route {
            method: Method::GET,
            path: "/v1/persons/{code}/records",
            caller: (),
            body: BodyLimit::Empty,
            endpoint: "records",
        },
    ];

    #[test]
    fn placeholders_capture_one_segment() {
        let (route, params) = find(TABLE, &Method::GET, "/v1/queries/q-1").unwrap();
        assert_eq!(route.endpoint, "get");
        assert_eq!(params.get("id"), "q-1");
        let (route, params) = find(TABLE, &Method::GET, "/v1/persons/P1/records").unwrap();
        assert_eq!(route.endpoint, "records");
        assert_eq!(params.get("code"), "P1");
        assert_eq!(
            find(TABLE, &Method::GET, "/v1/queries/a/b").unwrap_err(),
            Miss::NotFound
        );
        assert_eq!(
            find(TABLE, &Method::GET, "/v1/queries/").unwrap_err(),
            Miss::NotFound
        );
    }

    #[test]
    fn a_known_path_with_another_method_is_405_not_404() {
        assert_eq!(
            find(TABLE, &Method::DELETE, "/v1/queries").unwrap_err(),
            Miss::MethodNotAllowed(vec![Method::POST])
        );
        assert_eq!(
            find(TABLE, &Method::GET, "/v1/nothing").unwrap_err(),
            Miss::NotFound
        );
    }

    #[test]
    fn fixed_limits_never_exceed_the_configured_one() {
        assert_eq!(BodyLimit::Bytes(4096).max_bytes(1024), 1024);
        assert_eq!(BodyLimit::Bytes(4096).max_bytes(1 << 20), 4096);
        assert_eq!(BodyLimit::Empty.max_bytes(1 << 20), 0);
    }
}
