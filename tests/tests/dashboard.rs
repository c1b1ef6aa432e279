//! The district dashboard in a real browser: headless Chromium loads the demo federation's
//! dashboard and the test reads the page it rendered. Every node is listed and up, the lag
//! chart draws; when an origin county stops, its row turns unreachable while the stream
//! keeps registering move-ins for it, so the channels into it fall behind; once it is back
//! they catch up to 0.
//!
//! Needs Debian's `chromium` (`LDX_CHROMIUM` names another binary); `.ci/run` installs it.
//! Screenshots are kept in `$CARGO_TARGET_DIR/ldx-artifacts/` (`dashboard.png` during the
//! outage, `dashboard-recovered.png` after it); the test prints their paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ldx_gateway::demo::{self, DemoOptions, DemoReady};

/// The origin county stopped and restarted: every third streamed move-in is one of hers.
const STOPPED: &str = "411421";
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    let path = std::env::var_os("LDX_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: this test drives headless Chromium; install it with `apt-get install -y chromium` \
         (.ci/run does) or set LDX_CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

/// `$CARGO_TARGET_DIR/ldx-artifacts`, found from this test binary's place in the target
/// directory (`<target>/debug/deps/dashboard-…`) when the variable is unset.
fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        exe.ancestors().nth(3).expect("the test binary lives in <target>/<profile>/deps").to_owned()
    });
    let dir = target.join("ldx-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Runs headless Chromium on `url` with `args` and returns what it printed. The page gets
/// a few seconds of virtual time, enough for its first refresh from the JSON endpoints.
async fn chromium_run(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let run = tokio::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=2500")
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium did not finish within 60 s")
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("chromium prints UTF-8")
}

/// The page as Chromium rendered it.
#[derive(Debug)]
struct Page {
    dom: String,
}

impl Page {
    async fn load(url: &str) -> Self {
        Self { dom: chromium_run(url, &["--dump-dom"]).await }
    }

    /// Attributes of every element whose start tag has attribute `marker`.
    fn elements_with(&self, marker: &str) -> Vec<BTreeMap<String, String>> {
        let needle = format!(" {marker}=\"");
        let mut found = Vec::new();
        let mut rest = self.dom.as_str();
        while let Some(at) = rest.find(&needle) {
            let start = rest[..at].rfind('<').expect("an attribute is inside a tag");
            let end = at + rest[at..].find('>').expect("a tag ends");
            found.push(attributes(&rest[start..end]));
            rest = &rest[end..];
        }
        found
    }

    /// Node rows by division: their `data-state`.
    fn node_states(&self) -> BTreeMap<String, String> {
        self.elements_with("data-node").into_iter().map(|a| (a["data-node"].clone(), a["data-state"].clone())).collect()
    }

    /// Node rows by division: what the gateway made of their signed watermarks.
    fn watermarks(&self) -> BTreeMap<String, String> {
        self.elements_with("data-node")
            .into_iter()
            .map(|a| (a["data-node"].clone(), a.get("data-watermarks").cloned().unwrap_or_default()))
            .collect()
    }

    /// Lag in messages of every channel into `to`, by sender.
    fn lag_into(&self, to: &str) -> BTreeMap<String, u64> {
        self.elements_with("data-to")
            .into_iter()
            .filter(|a| a.get("data-to").map(String::as_str) == Some(to) && a.contains_key("data-from"))
            .map(|a| (a["data-from"].clone(), a["data-lag-messages"].parse().expect("a lag is a number")))
            .collect()
    }

    /// Points the chart with element id `id` has drawn.
    fn chart_points(&self, id: &str) -> u64 {
        self.elements_with("id")
            .into_iter()
            .find(|a| a["id"] == id)
            .and_then(|a| a.get("data-points")?.parse().ok())
            .unwrap_or(0)
    }

    /// Assessment rows by pair and indicator: (by destination, by origin, disagree).
    fn assessment(&self) -> BTreeMap<(String, String), (String, String, bool)> {
        self.elements_with("data-indicator")
            .into_iter()
            .map(|a| {
                let key = (a["data-pair"].clone(), a["data-indicator"].clone());
                (key, (a["data-by-destination"].clone(), a["data-by-origin"].clone(), a["data-disagree"] == "true"))
            })
            .collect()
    }

    /// How often the page has redrawn from `/api/status` and `/api/history` since loading.
    fn refreshes(&self) -> u32 {
        self.body().get("data-refreshes").and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    fn body(&self) -> BTreeMap<String, String> {
        self.elements_with("data-state").into_iter().find(|a| a.contains_key("data-updated-ms")).unwrap_or_default()
    }
}

/// `name="value"` pairs of a start tag as Chromium serialises it.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(char::is_whitespace).next().unwrap_or_default().to_owned();
        let value_start = eq + 2;
        let value_end = value_start + rest[value_start..].find('"').expect("a quoted value ends");
        out.insert(name, rest[value_start..value_end].replace("&amp;", "&"));
        rest = &rest[value_end + 1..];
    }
    out
}

/// Loads the page until `check` accepts it or `WAIT` passes.
async fn wait_for_page(url: &str, what: &str, check: impl Fn(&Page) -> bool) -> (Page, Duration) {
    let started = Instant::now();
    loop {
        let page = Page::load(url).await;
        if check(&page) {
            return (page, started.elapsed());
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: not seen within {WAIT:?}; nodes {:?}, lag into {STOPPED} {:?}, chart points {}",
            page.node_states(),
            page.lag_into(STOPPED),
            page.chart_points("lag-chart")
        );
    }
}

async fn screenshot(url: &str, name: &str) -> PathBuf {
    let path = artifact_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium_run(url, &[&format!("--screenshot={}", path.display()), "--window-size=1400,3800"]).await;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{}: screenshot missing or blank ({size} bytes)", path.display());
    eprintln!("screenshot: {} ({size} bytes)", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_an_origin_going_down_and_catching_up() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        dir: Some(dir.path().to_owned()),
        persons_per_node: 3,
        stream_every: Some(Duration::from_millis(200)),
        collect_every: Duration::from_millis(300),
        ..DemoOptions::default()
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<DemoReady>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let demo = tokio::spawn(demo::run(
        options,
        async {
            let _ = stop_rx.await;
        },
        move |ready| {
            let _ = ready_tx.send(ready.clone());
        },
    ));
    let started = Instant::now();
    let ready = tokio::time::timeout(READY_TIMEOUT, ready_rx)
        .await
        .expect("the demo did not become ready in time")
        .expect("the demo stopped before it was ready");
    eprintln!("demo ready in {:.1?}", started.elapsed());
    let url = format!("http://{}/", ready.dashboard);
    let divisions: Vec<String> = ready.nodes.iter().map(|n| n.division.as_str().to_owned()).collect();
    assert!(divisions.len() >= 6 && divisions.iter().any(|d| d == STOPPED), "{divisions:?}");

    let (page, waited) = wait_for_page(
        &url,
        "every node up, the channels into the origin listed, the chart drawn, a refresh done",
        |p| {
            let states = p.node_states();
            divisions.iter().all(|d| states.get(d).map(String::as_str) == Some("up"))
                && p.lag_into(STOPPED).len() >= 4
                && p.chart_points("lag-chart") > 0
                && p.chart_points("lag-seconds-chart") > 0
                && p.refreshes() > 0
        },
    )
    .await;
    assert_eq!(page.node_states().len(), divisions.len(), "no row for a node outside the demo");
    let watermarks = page.watermarks();
    assert!(watermarks.values().all(|w| w == "verified"), "every node signs its watermarks: {watermarks:?}");
    assert!(page.dom.contains("节点 <span class=\"en\">Nodes</span>"), "labels in Chinese with English");
    assert!(page.body().get("data-state").is_some_and(|s| s == "ready"), "{:?}", page.body());
    eprintln!(
        "all {} nodes up, chart {} points, within {waited:.1?}; watermarks {watermarks:?}; lag into {STOPPED}: {:?}",
        divisions.len(),
        page.chart_points("lag-chart"),
        page.lag_into(STOPPED)
    );

    // The two-way assessment: both sides' figures of every pair, here the notices of the
    // quarter counted alike at both ends once the channels are caught up.
    let pair = format!("410103007-{STOPPED}");
    let notice = (pair.clone(), "notice_timeliness".to_owned());
    let (page, waited) = wait_for_page(&url, "both sides' notice figures of a pair, agreeing", |p| {
        p.assessment().get(&notice).is_some_and(|(d, o, disagree)| !d.is_empty() && d == o && !disagree)
    })
    .await;
    eprintln!("assessment within {waited:.1?}: {:?}", page.assessment().get(&notice));
    assert!(page.dom.contains("双向考核 <span class=\"en\">Two-way assessment</span>"));

    ready.control.stop_node(STOPPED).await.expect("the origin stops cleanly");
    let total = |p: &Page| p.lag_into(STOPPED).values().sum::<u64>();
    let (down, waited) = wait_for_page(&url, "the stopped origin unreachable, with lag into it", |p| {
        p.node_states().get(STOPPED).map(String::as_str) == Some("unreachable") && total(p) > 0
    })
    .await;
    let first = total(&down);
    eprintln!("{STOPPED} unreachable within {waited:.1?}; lag into it {first}: {:?}", down.lag_into(STOPPED));
    let (grown, waited) =
        wait_for_page(&url, "the lag into the stopped origin growing", |p| total(p) >= first + 3).await;
    eprintln!("lag into {STOPPED} grew to {} within {waited:.1?}: {:?}", total(&grown), grown.lag_into(STOPPED));
    assert!(grown.node_states().values().filter(|s| *s == "up").count() == divisions.len() - 1, "the others stay up");
    let (flagged, _) = wait_for_page(&url, "the stopped origin's side missing and flagged", |p| {
        p.assessment().get(&notice).is_some_and(|(d, o, disagree)| !d.is_empty() && o.is_empty() && *disagree)
    })
    .await;
    eprintln!("while {STOPPED} is down: {:?}", flagged.assessment().get(&notice));
    screenshot(&url, "dashboard.png").await;

    ready.control.start_node(STOPPED).await.expect("the origin restarts");
    let (back, waited) = wait_for_page(&url, "the restarted origin up and caught up", |p| {
        p.node_states().get(STOPPED).map(String::as_str) == Some("up")
            && !p.lag_into(STOPPED).is_empty()
            && total(p) == 0
    })
    .await;
    eprintln!("{STOPPED} up again and caught up within {waited:.1?}: {:?}", back.lag_into(STOPPED));
    assert!(back.chart_points("lag-chart") > 0);
    screenshot(&url, "dashboard-recovered.png").await;

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), demo)
        .await
        .expect("the demo stops within a minute")
        .expect("the demo task")
        .expect("the demo stops cleanly");
}

/// The README's command: `ldx-gateway demo` prints the dashboard's address, and the page
/// there lists every node of the federation it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldx_gateway_demo_prints_the_dashboard_address() {
    use tokio::io::AsyncBufReadExt;

    chromium();
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ldx-gateway-harness"))
        .args(["demo", "--persons", "2", "--stream-interval-ms", "0", "--collect-interval-ms", "200", "--dir"])
        .arg(dir.path())
        // Channels interrupted by the shutdown are expected; errors still show.
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut dashboard = None;
    let mut nodes = Vec::new();
    let printed = async {
        while let Some(line) = lines.next_line().await.expect("the demo's output") {
            if let Some(url) = line.strip_prefix("dashboard: ") {
                dashboard = Some(url.trim().to_owned());
            }
            let cols: Vec<_> = line.split_whitespace().collect();
            if cols.len() >= 4 && cols[3].starts_with("https://") {
                nodes.push(cols[0].to_owned());
            }
            if line.contains("demo federation ready") {
                return;
            }
        }
        panic!("the demo ended before it was ready");
    };
    tokio::time::timeout(READY_TIMEOUT, printed).await.expect("the demo did not become ready in time");
    let url = dashboard.expect("the demo printed `dashboard: URL`");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with('/'), "{url}");
    assert!(nodes.len() >= 6, "{nodes:?}");

    let (page, waited) = wait_for_page(&url, "every node of the demo listed and up", |p| {
        let states = p.node_states();
        nodes.iter().all(|d| states.get(d).map(String::as_str) == Some("up"))
    })
    .await;
    eprintln!("{url}: {} nodes up within {waited:.1?}", page.node_states().len());

    let pid = child.id().expect("the demo is running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stops within a minute of SIGTERM")
        .unwrap();
    assert!(status.success(), "the demo stops cleanly: {status}");
}

#[test]
fn attributes_are_read_from_a_serialised_tag() {
    let a = attributes(r#"<tr data-node="411421" data-state="up" class="a b">"#);
    assert_eq!(a["data-node"], "411421");
    assert_eq!(a["data-state"], "up");
    assert_eq!(a["class"], "a b");
}
