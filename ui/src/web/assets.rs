//! The files the binary embeds and serves: htmx, its SSE extension, the
//! dashboard's script and styles, under content-hashed URLs.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// htmx and its SSE extension, vendored from npm (see assets/README.md),
/// and the dashboard's own script and styles.
const ASSETS: [Asset; 4] = [
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/htmx.min.js"),
    },
    Asset {
        name: "sse.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/sse.min.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/app.css"),
    },
];

/// FNV-1a of an asset: its URL changes with its content, so it can be
/// cached for a year.
fn content_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The URLs of the assets, for the pages.
#[derive(Debug)]
pub struct AssetUrls {
    pub htmx: String,
    pub sse: String,
    pub app: String,
    pub css: String,
}

pub(super) static ASSET_URLS: LazyLock<AssetUrls> = LazyLock::new(|| {
    let url = |a: &Asset| format!("/assets/{}/{}", content_hash(a.bytes), a.name);
    AssetUrls {
        htmx: url(&ASSETS[0]),
        sse: url(&ASSETS[1]),
        app: url(&ASSETS[2]),
        css: url(&ASSETS[3]),
    }
});

pub(super) async fn asset(Path((hash, name)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // An old page may ask for an old hash: serve today's file, uncached.
    let cache = if hash == content_hash(asset.bytes) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.bytes,
    )
        .into_response()
}
