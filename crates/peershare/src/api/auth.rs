//! Who may use the API: the token (`<data-dir>/api.token`), and the checks
//! every request passes before it is routed, in this order:
//!
//! 1. `Host` is a loopback name or address (`localhost`, `127.x.y.z`,
//!    `[::1]`, each with an optional port), else 403: a web page cannot
//!    reach the API through a DNS name rebound to 127.0.0.1, since its
//!    requests carry that name.
//! 2. A request other than GET or HEAD that carries an `Origin` must carry
//!    exactly `http://` + its `Host`, else 403: no other page may change
//!    anything, even with the browser's cookie. There is no CORS: no
//!    `Access-Control-*` header is ever sent, and `OPTIONS` (a preflight)
//!    is always 403.
//! 3. The token, as `Authorization: Bearer TOKEN` or the cookie
//!    `peershare_token=TOKEN` (the web UI's session), compared in constant
//!    time, else 401 with `WWW-Authenticate: Bearer`.
//! 4. A declared `Content-Length` over `MAX_BODY_BYTES`, 413 (a body
//!    without one is cut at that size as it is read: 413 too).
//!
//! The token file is like the node's key file ([`crate::identity`]): 32
//! random bytes (ring's `SystemRandom`) as 64 lowercase hex digits and a
//! newline, created mode 0600 without a race, kept across restarts, and
//! refused when group or others have any permission on it, when it is a
//! symbolic link, or not this user's.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::rand::{SecureRandom, SystemRandom};

use super::{ApiError, MAX_BODY_BYTES};
use crate::error::StoreError;
use crate::store::{create_private, read_private, remedy};

/// The token file's name in the data dir.
pub const TOKEN_FILE: &str = "api.token";
/// The cookie that carries the token for the web UI.
pub const TOKEN_COOKIE: &str = "peershare_token";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// The API's secret: whoever shows it may use the node.
#[derive(Clone)]
pub struct ApiToken {
    /// `2 * TOKEN_BYTES` lowercase hex digits.
    hex: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// The token in `data_dir`'s [`TOKEN_FILE`], created (mode 0600) if
    /// there is none. Two processes racing to create it end up with the
    /// same token.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(TOKEN_FILE);
        match Self::load(data_dir) {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; TOKEN_BYTES];
                SystemRandom::new()
                    .fill(&mut raw)
                    .map_err(|_| StoreError::Io {
                        path: path.clone(),
                        source: std::io::Error::other("the system's random generator failed"),
                    })?;
                let token = Self {
                    hex: hex::encode(raw),
                };
                if create_private(&path, format!("{}\n", token.hex).as_bytes())? {
                    Ok(token)
                } else {
                    // Another process got there first: its token it is.
                    Self::load(data_dir)
                }
            }
            other => other,
        }
    }

    /// The token in `data_dir`'s [`TOKEN_FILE`], checked like
    /// [`ApiToken::load_or_create`] does, never created (a client reading
    /// the token of the node running there).
    pub fn load(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(TOKEN_FILE);
        let bytes = read_private(
            &path,
            |path, mode| StoreError::TokenPermissions { path, mode },
            remedy::TOKEN,
        )?;
        let hex = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let valid = hex.len() == 2 * TOKEN_BYTES
            && hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !valid {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("not {} lowercase hex digits", 2 * TOKEN_BYTES),
                remedy: remedy::TOKEN,
            });
        }
        Ok(Self {
            hex: String::from_utf8(hex.to_vec()).expect("checked: ASCII"),
        })
    }

    /// The token, as clients send it.
    pub fn as_str(&self) -> &str {
        &self.hex
    }

    /// Whether `candidate` is this token, in a time that does not depend
    /// on where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.hex.as_bytes(), candidate.as_bytes());
        // The length is no secret: every token has the same.
        if a.len() != b.len() {
            return false;
        }
        let diff = a
            .iter()
            .zip(b)
            .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
        std::hint::black_box(diff) == 0
    }
}

/// Whether `host` (a `Host` header's value) names this machine by a
/// loopback name or address: `localhost`, `127.x.y.z` or `[::1]`, each
/// with an optional port.
pub fn is_loopback_host(host: &str) -> bool {
    // `port` is "" or ":" and what follows.
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(split) => split,
            None => return false,
        },
        None => host.split_at(host.find(':').unwrap_or(host.len())),
    };
    let port_ok = match port.strip_prefix(':') {
        Some(p) => {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        }
        None => port.is_empty(),
    };
    let name_ok = if host.starts_with('[') {
        name.parse::<Ipv6Addr>() == Ok(Ipv6Addr::LOCALHOST)
    } else {
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    port_ok && name_ok
}

/// The request's `Host`, if there is exactly one and it (and the target's
/// authority, for an absolute-form target) is loopback.
fn loopback_host<'a>(headers: &'a HeaderMap, uri: &Uri) -> Result<&'a str, ApiError> {
    let forbidden = || {
        ApiError::new(
            "forbidden",
            "requests must come from this machine, naming it by a loopback name or address \
             (Host: localhost, 127.0.0.1 or [::1], with the API's port)",
        )
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().map_err(|_| forbidden())?,
        _ => return Err(forbidden()),
    };
    if !is_loopback_host(host)
        || uri
            .authority()
            .is_some_and(|a| !is_loopback_host(a.as_str()))
    {
        return Err(forbidden());
    }
    Ok(host)
}

/// Whether the request shows `token`, as a bearer token or the cookie.
fn authorized(token: &ApiToken, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .any(|(_, t)| token.matches(t.trim()));
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == TOKEN_COOKIE && token.matches(value))
    };
    bearer || cookie()
}

/// The checks of the module's list, in its order.
fn check(token: &ApiToken, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let host = loopback_host(headers, req.uri())?;
    let method = req.method();
    if method == Method::OPTIONS {
        return Err(ApiError::new(
            "forbidden",
            "no cross-origin requests: this API answers no CORS preflight",
        ));
    }
    if method != Method::GET && method != Method::HEAD {
        let ours = format!("http://{host}");
        if headers
            .get_all(header::ORIGIN)
            .iter()
            .any(|o| o.as_bytes() != ours.as_bytes())
        {
            return Err(ApiError::new(
                "forbidden",
                format!("only pages served from {ours} may change anything here"),
            ));
        }
    }
    if !authorized(token, headers) {
        return Err(ApiError::new(
            "unauthorized",
            format!(
                "a token is needed: send `Authorization: Bearer TOKEN` with the token in the \
                 node's data dir ({TOKEN_FILE})"
            ),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::too_large());
    }
    Ok(())
}

/// The middleware that runs [`check`] before anything else.
pub(super) async fn checks(
    State(token): State<Arc<ApiToken>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&token, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LocalHost:8080",
            "localhost:1",
            "127.0.0.1",
            "127.0.0.1:65535",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:7423",
            "[0:0:0:0:0:0:0:1]:7423",
        ] {
            assert!(is_loopback_host(ok), "{ok} is loopback");
        }
        for bad in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:abc",
            "localhost:+80",
            "localhost:65536",
            "localhost:80:80",
            "127.0.0.1:80:80",
            "0.0.0.0",
            "128.0.0.1",
            "192.168.1.10:7423",
            "127.000.000.001",
            "2130706433",
            "[::2]",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::ffff:127.0.0.1]",
            "::1",
            "user@localhost",
        ] {
            assert!(!is_loopback_host(bad), "{bad:?} is not loopback");
        }
    }

    #[test]
    fn tokens_match_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let t = ApiToken::load_or_create(dir.path()).unwrap();
        assert!(t.matches(t.as_str()));
        let mut other = t.as_str().to_owned();
        let last = if other.ends_with('0') { "1" } else { "0" };
        other.replace_range(63.., last);
        assert!(!t.matches(&other));
        assert!(!t.matches(&t.as_str()[..63]));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains(t.as_str()), "Debug hides it");
    }
}
