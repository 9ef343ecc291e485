//! The console's page, script, charts and styles, compiled into the binary
//! (`console/assets/`): the console needs no network beyond the gateway.

/// One built-in file and its media type.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page itself.
pub const PAGE: &Asset = &Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../assets/index.html"),
};

const SCRIPT: &str = "text/javascript; charset=utf-8";

const NAMED: &[(&str, Asset)] = &[
    (
        "console.js",
        asset(SCRIPT, include_str!("../assets/console.js")),
    ),
    (
        "charts.js",
        asset(SCRIPT, include_str!("../assets/charts.js")),
    ),
    (
        "query.js",
        asset(SCRIPT, include_str!("../assets/query.js")),
    ),
    (
        "console.css",
        asset(
            "text/css; charset=utf-8",
            include_str!("../assets/console.css"),
        ),
    ),
];

const fn asset(content_type: &'static str, body: &'static str) -> Asset {
    Asset { content_type, body }
}

/// The asset served at `/assets/{name}`.
pub fn named(name: &str) -> Option<&'static Asset> {
    NAMED.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}
