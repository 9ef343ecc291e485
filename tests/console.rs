//! The analysts' console in a real browser: Debian's headless Chromium,
//! driven over WebDriver by chromedriver, against `joinery console`
//! (its own process) asking a real gateway process over mutual TLS on the
//! demo's synthetic data. An analyst new to the project answers the two
//! questions issue #23 names — children known to CAMHS and to children's
//! social care by age band, and whether the repeat child-protection-plan
//! rate is turning the curve — by clicking, sees the chart, downloads the
//! answer, and axe-core finds no WCAG 2.2 A/AA violation on any page
//! state. Screenshots are kept in `target/tmp/console-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (Debian) and axe-core's
//! `axe.min.js` (npm); `.ci/run` installs them and sets
//! `JOINERY_REQUIRE_BROWSER=1`, without which a missing one says SKIPPED.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Deployment, free_local_address, joinery, shout};
use fantoccini::{Client, ClientBuilder, Locator};

/// The browser's parts, or why they are missing.
struct Browser {
    chromedriver: PathBuf,
    chromium: PathBuf,
    axe: String,
}

fn browser() -> Result<Browser, String> {
    let path = |var: &str, default: &str| {
        PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()))
    };
    let chromedriver = path("JOINERY_CHROMEDRIVER", "/usr/bin/chromedriver");
    let chromium = path("JOINERY_CHROMIUM", "/usr/bin/chromium");
    let axe = path(
        "JOINERY_AXE",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/ci-tools/axe/node_modules/axe-core/axe.min.js"
        ),
    );
    for (what, file) in [("chromedriver", &chromedriver), ("chromium", &chromium)] {
        if !file.exists() {
            return Err(format!("no {what} at {}", file.display()));
        }
    }
    let axe = std::fs::read_to_string(&axe)
        .map_err(|e| format!("no axe-core at {} ({e}; set JOINERY_AXE)", axe.display()))?;
    Ok(Browser {
        chromedriver,
        chromium,
        axe,
    })
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `joinery console` for the demo analyst against `gateway`; its address.
fn start_console(d: &Deployment, gateway: &str) -> (Running, String) {
    let mut child = joinery()
        .args(["console", "--listen", "127.0.0.1:0", "--gateway", gateway])
        .args(["--server-name", "localhost", "--tls-ca"])
        .arg(d.ca())
        .arg("--tls-cert")
        .arg(d.path("pki/analysts/analyst-demo-analyst.pem"))
        .arg("--tls-key")
        .arg(d.path("pki/analysts/analyst-demo-analyst.key"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the console");
    let stdout = child.stdout.take().expect("console stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Console: open ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the console printed its address");
    (Running(child), url)
}

async fn start_browser(browser: &Browser, downloads: &Path) -> (Running, Client) {
    let address = free_local_address();
    let port = address.rsplit_once(':').expect("host:port").1.to_owned();
    let driver = std::process::Command::new(&browser.chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Running(driver);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": browser.chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1400,1800",
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("chromedriver did not start a browser session at {url}");
}

/// axe-core's WCAG 2.0–2.2 A and AA rules on the page as it is now.
async fn accessibility_violations(c: &Client, axe: &str) -> Vec<serde_json::Value> {
    c.execute(axe, vec![]).await.expect("inject axe-core");
    let found = c
        .execute_async(
            r"const done = arguments[arguments.length - 1];
              axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] } })
                .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')) }))))
                .catch(e => done([{ id: 'axe-failed', help: String(e) }]));",
            vec![],
        )
        .await
        .expect("run axe-core");
    found.as_array().cloned().unwrap_or_default()
}

async fn assert_accessible(c: &Client, axe: &str, state: &str) {
    let violations = accessibility_violations(c, axe).await;
    assert!(
        violations.is_empty(),
        "WCAG violations on {state}: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// A screenshot of the browser's window, scrolled to `element`.
async fn screenshot(c: &Client, name: &str, element: &str) {
    c.execute(
        "document.querySelector(arguments[0]).scrollIntoView();",
        vec![serde_json::json!(element)],
    )
    .await
    .expect("scroll");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("element text")
}

async fn choose(c: &Client, select: &str, value: &str) {
    c.find(Locator::Css(select))
        .await
        .unwrap_or_else(|e| panic!("{select}: {e}"))
        .select_by_value(value)
        .await
        .unwrap_or_else(|e| panic!("{select} = {value}: {e}"));
}

/// Clicks the element with this id.
async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

/// Runs the document on show and waits for its answer.
async fn run_query(c: &Client) {
    click(c, "run").await;
    c.wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css("#status:not(:empty)"))
        .await
        .unwrap();
    for _ in 0..300 {
        let status = text(c, "#status").await;
        if status == "Answered." {
            return;
        }
        assert!(!status.starts_with("Not answered"), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer in 30 s");
}

/// The text a download link points at, as the browser would save it.
async fn downloaded(c: &Client, link: &str) -> serde_json::Value {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("{link}:not([aria-disabled])")))
        .await
        .unwrap_or_else(|e| panic!("{link} never became ready: {e}"));
    c.execute_async(
        r"const done = arguments[arguments.length - 1];
          fetch(document.querySelector(arguments[0]).href)
            .then(r => r.arrayBuffer())
            .then(b => { const bytes = new Uint8Array(b); done({ text: new TextDecoder().decode(bytes), head: Array.from(bytes.slice(0, 8)), size: bytes.length }); })
            .catch(e => done({ error: String(e) }));",
        vec![serde_json::json!(link)],
    )
    .await
    .expect("read the download")
}

/// What `script` returns in the page (its `arguments` are `args`).
async fn page_value<T: serde::de::DeserializeOwned>(
    c: &Client,
    script: &str,
    args: Vec<serde_json::Value>,
) -> T {
    let value = c
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// How many elements `css` matches.
async fn count(c: &Client, css: &str) -> u64 {
    page_value(
        c,
        "return document.querySelectorAll(arguments[0]).length;",
        vec![serde_json::json!(css)],
    )
    .await
}

/// The chart on show.
async fn chart_kind(c: &Client) -> String {
    page_value(
        c,
        "return document.getElementById('chart-kind').value;",
        vec![],
    )
    .await
}

/// Opens an indicator in the library and uses it, as an analyst would.
async fn use_indicator(c: &Client, title: &str) {
    c.execute(
        "[...document.querySelectorAll('#library summary')].find(s => s.textContent === arguments[0]).click();",
        vec![serde_json::json!(title)],
    )
    .await
    .unwrap_or_else(|e| panic!("open {title}: {e}"));
    c.find(Locator::Css(&format!(
        "button[aria-label='Use the indicator: {title}']"
    )))
    .await
    .unwrap_or_else(|e| panic!("the button to use {title}: {e}"))
    .click()
    .await
    .unwrap();
}

/// A file the browser downloads, once it has saved it (10 s at most).
async fn saved_by_browser(file: &Path) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the browser did not save {}", file.display());
}

/// The answer's table as the page shows it: header, then rows.
async fn shown_table(c: &Client) -> Vec<Vec<String>> {
    page_value(
        c,
        "return [...document.querySelectorAll('#table tr')].map(tr => [...tr.children].map(td => td.textContent));",
        vec![],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_analyst_answers_both_questions_in_the_console_and_every_page_is_accessible() {
    let browser = match browser() {
        Ok(b) => b,
        Err(why) => {
            let message = format!("SKIPPED the console browser test: {why}");
            let required = std::env::var("JOINERY_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(!required, "{message} (JOINERY_REQUIRE_BROWSER=1)");
            shout(&message);
            return;
        }
    };
    let (d, _) = Deployment::demo(3000);
    let gateway = d.start_gateway(None, &["--linkage-interval-secs", "36000"]);
    let (_console, url) = start_console(&d, &gateway.address);
    let downloads = d.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (_driver, c) = start_browser(&browser, &downloads).await;

    // Without the start-up token the console refuses, page and API alike.
    let base = url.split("/?").next().unwrap().to_owned();
    c.goto(&format!("{base}/api/library")).await.unwrap();
    let refused = c.source().await.unwrap();
    assert!(refused.contains("one-time token"), "{refused}");

    c.goto(&url).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("body[data-ready='true']"))
        .await
        .expect("the console loaded the library and the gateway's vocabulary");
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        format!("{base}/"),
        "the token leaves the address bar"
    );
    let connection = text(&c, "#connection").await;
    assert!(connection.contains(&gateway.address), "{connection}");
    let library = text(&c, "#library").await;
    for question in [
        "How much did we do?",
        "How well did we do it?",
        "Is anyone better off?",
    ] {
        assert!(library.contains(question), "{question} in {library}");
    }
    assert_accessible(&c, &browser.axe, "the start page").await;
    screenshot(&c, "1-start", "body").await;

    // Question 1: children known to CAMHS and to children's social care, by age band.
    for label in ["(CAMHS)", "Children and Families"] {
        let id: String = page_value(
            &c,
            "return [...document.querySelectorAll('#agencies label')].find(l => l.textContent.includes(arguments[0])).htmlFor;",
            vec![serde_json::json!(label)],
        )
        .await;
        click(&c, &id).await;
    }
    choose(&c, "#rows", "age_bands").await;
    let document: String = page_value(
        &c,
        "return document.getElementById('document').value;",
        vec![],
    )
    .await;
    for part in [
        "known_to: { organisation: RX9 }",
        "known_to: { organisation: E08000099 }",
        "rows: { age_bands: [0, 5, 11, 16, 18] }",
    ] {
        assert!(document.contains(part), "{part} in {document}");
    }
    run_query(&c).await;
    let explanation = text(&c, "#answer-explanation").await;
    assert!(
        explanation.contains("RX9") && explanation.contains("E08000099"),
        "{explanation}"
    );
    let table = shown_table(&c).await;
    let labels: Vec<&str> = table.iter().skip(1).map(|r| r[0].as_str()).collect();
    assert_eq!(
        labels,
        ["0-4", "5-10", "11-15", "16-17", "18+", "unknown", "total"],
        "{table:?}"
    );
    // The page shows the gateway's answer unchanged: the CLI, asking the
    // same document, gets the same release.
    let file = d.path("question-1.yaml");
    std::fs::write(&file, &document).unwrap();
    let cli = d.client(
        &["query", "run", file.to_str().unwrap(), "--format", "csv"],
        &gateway.address,
        (
            d.path("pki/analysts/analyst-demo-analyst.pem"),
            d.path("pki/analysts/analyst-demo-analyst.key"),
        ),
        &[],
    );
    let cli_rows: Vec<Vec<String>> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(cli_rows[1..], table[1..], "console and CLI agree");
    let legend = text(&c, "#legend").await;
    assert!(
        legend.contains("suppressed") && legend.contains("nothing to show"),
        "{legend}"
    );
    let stamp = text(&c, "#answer-stamp").await;
    assert!(stamp.contains("data generation"), "{stamp}");
    let bars = count(&c, "#chart svg rect").await;
    assert!(bars > 2, "the chart has bars: {bars}");
    assert_accessible(&c, &browser.axe, "the first answer").await;
    screenshot(&c, "2-known-to-camhs-and-social-care-by-age", "#answer").await;

    // The document saved: listed on the page and downloaded as it is.
    click(&c, "save").await;
    assert_eq!(count(&c, "#saved li").await, 1, "one saved document");
    assert_eq!(
        saved_by_browser(&downloads.join("joinery-query.yaml")).await,
        document
    );

    // Its downloads: the CSV is the table; the chart as SVG and PNG.
    let csv = downloaded(&c, "#export-csv").await;
    let csv_rows: Vec<Vec<String>> = csv["text"]
        .as_str()
        .expect("CSV text")
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(csv_rows[1..], table[1..], "the CSV holds the table");
    let svg = downloaded(&c, "#export-svg").await;
    assert!(svg["text"].as_str().unwrap().starts_with("<svg"), "{svg}");
    let png = downloaded(&c, "#export-png").await;
    assert_eq!(
        png["head"],
        serde_json::json!([137, 80, 78, 71, 13, 10, 26, 10]),
        "{}",
        png["size"]
    );
    click(&c, "export-csv").await;
    assert_eq!(
        saved_by_browser(&downloads.join("joinery-answer.csv")).await,
        csv["text"].as_str().unwrap()
    );

    // The agencies as an UpSet chart; risk tiers by life-course segment;
    // an age pyramid.
    for (rows, columns, kind, name) in [
        ("agencies", "none", "upset", "3-agency-overlap-upset"),
        ("segment", "stratum", "bars", "4-risk-tiers-by-segment"),
        ("age_bands", "sex", "pyramid", "5-age-pyramid"),
    ] {
        choose(&c, "#rows", rows).await;
        choose(&c, "#columns", columns).await;
        run_query(&c).await;
        assert_eq!(chart_kind(&c).await, kind, "{name}");
        let labels = count(&c, "#chart svg text").await;
        assert!(labels > 6, "{name}: a labelled chart ({labels} labels)");
        assert_accessible(&c, &browser.axe, name).await;
        screenshot(&c, name, "#answer").await;
    }
    choose(&c, "#columns", "none").await;
    // A recorded attribute, offered from what the agreements share (never
    // an identifier).
    let offered: Vec<String> = page_value(
        &c,
        "return [...document.querySelectorAll('#attribute option')].map(o => o.value);",
        vec![],
    )
    .await;
    assert!(offered.iter().any(|a| a == "ethnicity"), "{offered:?}");
    for identifier in ["nhs_number", "postcode", "date_of_birth", "local_id"] {
        assert!(!offered.iter().any(|a| a == identifier), "{offered:?}");
    }
    choose(&c, "#rows", "attribute").await;
    choose(&c, "#attribute", "ethnicity").await;
    run_query(&c).await;
    let table = shown_table(&c).await;
    assert_eq!(table[0][0], "ethnicity", "{table:?}");

    // Question 2: is the repeat child-protection-plan rate turning the curve?
    use_indicator(
        &c,
        "Child protection plans that were a second or later plan",
    )
    .await;
    choose(&c, "#rows", "period").await;
    run_query(&c).await;
    assert_eq!(chart_kind(&c).await, "trend");
    let table = shown_table(&c).await;
    assert_eq!(
        table.len(),
        1 + 8 + 1,
        "eight quarters and the total: {table:?}"
    );
    let caption = text(&c, "#chart-caption").await;
    assert!(
        caption.contains("baseline forecast")
            || caption.contains("no verdict")
            || caption.contains("Too few"),
        "{caption}"
    );
    assert_accessible(&c, &browser.axe, "the turn-the-curve chart").await;
    screenshot(&c, "6-repeat-cp-plans-turning-the-curve", "#answer").await;
    // Re-referrals (lower is better), with figures in every quarter at this
    // size: the baseline is drawn and the curve judged.
    use_indicator(&c, "Re-referrals within 12 months").await;
    run_query(&c).await;
    assert_eq!(chart_kind(&c).await, "trend");
    assert_eq!(
        count(&c, "#chart svg line[stroke-dasharray]").await,
        1,
        "one dashed baseline"
    );
    let caption = text(&c, "#chart-caption").await;
    assert!(
        caption.contains("baseline forecast of")
            && (caption.contains("turning the right way") || caption.contains("has not turned")),
        "{caption}"
    );
    screenshot(&c, "7-re-referrals-turning-the-curve", "#answer").await;

    // New data arrives (a delivery moves the data generation on): the next
    // answer comes from the population as loaded, and says so.
    let store = common::open_database(&d.sqlite_url()).await;
    sqlx::query("UPDATE data_generation SET n = n + 1 WHERE id = 1")
        .execute(&store)
        .await
        .unwrap();
    choose(&c, "#every", "year").await;
    choose(&c, "#every", "quarter").await;
    run_query(&c).await;
    let stamp = text(&c, "#answer-stamp").await;
    assert!(stamp.contains("Newer data has arrived"), "{stamp}");
    assert_accessible(&c, &browser.axe, "a stale answer").await;

    // A document the gateway cannot answer says why, on the page.
    c.execute(
        "const d = document.getElementById('document'); d.value = 'rows: age_band\\n'; d.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "run").await;
    for _ in 0..100 {
        if text(&c, "#status").await.starts_with("Not answered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = text(&c, "#status").await;
    assert!(status.contains("age_band"), "{status}");
    assert_accessible(&c, &browser.axe, "a refusal").await;
    c.close().await.unwrap();
}
