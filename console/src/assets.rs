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

const NAMED: &[(&str, Asset)] = &[
    (
        "console.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../assets/console.js"),
        },
    ),
    (
        "charts.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../assets/charts.js"),
        },
    ),
    (
        "query.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("../assets/query.js"),
        },
    ),
    (
        "console.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("../assets/console.css"),
        },
    ),
];

/// The asset served at `/assets/{name}`.
pub fn named(name: &str) -> Option<&'static Asset> {
    NAMED.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}
