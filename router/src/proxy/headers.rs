//! Header hygiene between the client and a replica (RFC 9110 §7.6.1).
//!
//! Hop-by-hop headers (and any header named in `Connection`) belong to one connection and are
//! dropped in both directions; `Host` and `Content-Length` are re-derived for the new message.
//! End-to-end headers, `Authorization` included, pass through unchanged.

use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

/// Copy end-to-end headers from `from` into `to`, leaving out `Host` and `Content-Length`.
pub(crate) fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let listed: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for (name, value) in from {
        if HOP_BY_HOP.contains(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || listed.contains(name)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn drops_hop_by_hop_and_listed_headers() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        from.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        from.insert("x-secret", HeaderValue::from_static("1"));
        from.insert(header::HOST, HeaderValue::from_static("evil.example"));
        from.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        from.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        from.append("x-multi", HeaderValue::from_static("a"));
        from.append("x-multi", HeaderValue::from_static("b"));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        assert_eq!(to[header::AUTHORIZATION], "Bearer k");
        assert_eq!(to.get_all("x-multi").iter().count(), 2);
        for gone in [
            "connection",
            "x-secret",
            "host",
            "transfer-encoding",
            "content-length",
        ] {
            assert!(!to.contains_key(gone), "{gone}");
        }
    }
}
