//! The browser SDK and demo page, served by the signaling listener.
//!
//! Invariants:
//! - The assets are compiled into the binary with `include_str!` from the workspace's `web/` folder: the binary is
//!   self-contained, cargo rebuilds it when an asset changes, and what is served is exactly what the browser tests
//!   loaded. (`include_str!` rather than `rust-embed`: four small text files need no dependency, no build script and no
//!   runtime file lookup.)
//! - Only plain `GET`/`HEAD` requests reach these routes: a websocket upgrade on any path, `/` included, is taken by
//!   the signaling middleware of [`crate::http::router`] before routing, so these routes must be merged *before* that
//!   layer is applied.
//! - Each route answers with its exact content type (JavaScript as `text/javascript`, which module scripts require),
//!   `nosniff`, and `no-cache`, so a browser revalidates after the server is upgraded.
//! - Each route carries [`CONTENT_SECURITY_POLICY`], `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`. The
//!   page satisfies the policy as written (no inline script or style, no `eval`); the browser tests fail on any
//!   violation report and prove that the policy is enforced.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The demo page's Content-Security-Policy. Only this origin's scripts and styles run (no inline code, no `eval`);
/// nothing may frame the page (`frame-ancestors`, with `X-Frame-Options` for older browsers), plug-ins, `<base>` and
/// form posts are off. `connect-src` names `ws:`/`wss:` beyond `'self'` because the SDK may signal to any server the
/// page names (the README's `url` option; the browser tests use a ZLMediaKit signaling server); `img-src data:` is the
/// page's empty favicon. Video comes from `srcObject` (a MediaStream), which loads nothing, so `media-src` stays none.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../../../web/index.html") },
    Asset {
        path: "/switchboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/switchboard.js"),
    },
    Asset {
        path: "/demo.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/demo.js"),
    },
    Asset { path: "/demo.css", content_type: "text/css; charset=utf-8", body: include_str!("../../../web/demo.css") },
];

/// The routes of the embedded assets, to be merged into the listener's router (state-less, so any state fits).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let (content_type, body) = (asset.content_type, asset.body);
        router.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                        (header::X_FRAME_OPTIONS, "DENY"),
                        (header::REFERRER_POLICY, "no-referrer"),
                    ],
                    body,
                )
                    .into_response()
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Sends one HTTP/1.1 request to `routes()` served on a real socket; returns the whole response as text.
    async fn request(raw: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, routes::<()>()).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        server.abort();
        String::from_utf8(out).unwrap()
    }

    fn get_request(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn every_asset_is_served_whole_with_its_content_type() {
        for asset in &ASSETS {
            let response = request(&get_request(asset.path)).await;
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{}: {head}", asset.path);
            assert!(head.contains(&format!("content-type: {}", asset.content_type)), "{}: {head}", asset.path);
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
            assert!(head.contains(&format!("content-security-policy: {CONTENT_SECURITY_POLICY}\r\n")), "{head}");
            assert!(head.contains("x-frame-options: deny\r\n"), "{head}");
            assert!(head.contains("referrer-policy: no-referrer\r\n"), "{head}");
            assert_eq!(body, asset.body, "{}", asset.path);
        }
    }

    #[tokio::test]
    async fn head_is_answered_and_unknown_paths_are_not_found() {
        let head = request("HEAD /demo.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let missing = request(&get_request("/nope.js")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    }

    #[test]
    fn the_page_loads_exactly_the_served_assets() {
        let page = ASSETS[0].body;
        assert!(page.contains(r#"src="demo.js""#) && page.contains(r#"href="demo.css""#), "index.html asset links");
        assert!(ASSETS[2].body.contains(r#"from "./switchboard.js""#), "demo.js imports the SDK");
        // What CONTENT_SECURITY_POLICY forbids: inline script, inline event handlers and style attributes.
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script type=\"module\" src=").count(),
            "inline script"
        );
        assert!(!page.contains(" style=") && !page.contains(" onclick="), "inline style or handler in index.html");
    }
}
