//! The district's two-way assessment (双向考核): every node's signed statements for a
//! quarter, gathered over mutual TLS, set side by side per pair of regions (the
//! destination street office and the origin county), with a flag wherever the two sides'
//! counts differ (a sign that something was lost or is late), and each region scored on
//! the weighted 1000-point scale from what its counterparts measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ldx_proto::directory::Directory;
use ldx_proto::v1 as pb;
use ldx_proto::v1::assessment_client::AssessmentClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::directory::division_name;
use crate::nodes::Nodes;
use crate::pki::PkiError;

/// How long one node may take to answer `ldx-gateway assess`.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Indicators in display order, with the side each assesses and its default weight: each
/// side's weights add up to 1000 points.
pub const INDICATORS: [(&str, Side, u32); 6] = [
    ("notice_timeliness", Side::Destination, 300),
    ("report_return", Side::Destination, 300),
    ("report_quality", Side::Destination, 400),
    ("feedback_timeliness", Side::Origin, 400),
    ("verdict_return", Side::Origin, 400),
    ("certificate_answers", Side::Origin, 200),
];

/// Chinese labels of the indicators, for tables and the dashboard.
pub fn label_zh(name: &str) -> &'static str {
    match name {
        "notice_timeliness" => "通报及时率",
        "report_return" => "报告单寄回率",
        "report_quality" => "合格率",
        "feedback_timeliness" => "反馈及时率",
        "verdict_return" => "回函收回率",
        "certificate_answers" => "协查答复率",
        _ => "",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Destination,
    Origin,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Destination => "destination",
            Self::Origin => "origin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssessError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryFileError),
    #[error("no directory in {0}: add nodes with `ldx-gateway directory add` first")]
    NoDirectory(String),
    #[error("weights file {path}: {detail}")]
    Weights { path: String, detail: String },
}

/// Points per indicator; the default gives each side 1000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights(pub BTreeMap<String, u32>);

impl Default for Weights {
    fn default() -> Self {
        Self(INDICATORS.iter().map(|(n, _, w)| ((*n).to_owned(), *w)).collect())
    }
}

impl Weights {
    /// Reads a weights file: `indicator = points` lines (TOML-style, under an optional
    /// `[weights]` header, `#` comments). Indicators it leaves out keep their default
    /// weight; unknown names and non-numbers are refused with the line named.
    pub fn load(path: &Path) -> Result<Self, AssessError> {
        let err = |detail: String| AssessError::Weights { path: path.display().to_string(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut weights = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() || line == "[weights]" {
                continue;
            }
            let Some((name, points)) = line.split_once('=') else {
                return Err(err(format!("line {}: expected `indicator = points`, got {line:?}", n + 1)));
            };
            let name = name.trim();
            if !weights.0.contains_key(name) {
                return Err(err(format!("line {}: {name} is not an indicator (known: {})", n + 1, names().join(", "))));
            }
            let points = points.trim().parse().map_err(|_| {
                err(format!("line {}: {name} = {:?} must be a whole number of points", n + 1, points.trim()))
            })?;
            weights.0.insert(name.to_owned(), points);
        }
        Ok(weights)
    }
}

fn names() -> Vec<&'static str> {
    INDICATORS.iter().map(|(n, _, _)| *n).collect()
}

/// One side's figure of an indicator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figure {
    pub total: u64,
    pub on_time: u64,
    pub pending: u64,
}

impl Figure {
    /// Share of the decided items that met the deadline (1 when none was decided).
    pub fn rate(self) -> f64 {
        let decided = self.total.saturating_sub(self.pending);
        if decided == 0 { 1.0 } else { self.on_time as f64 / decided as f64 }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.on_time, self.total.saturating_sub(self.pending))?;
        if self.pending > 0 {
            write!(f, " +{} pending", self.pending)?;
        }
        Ok(())
    }
}

/// One indicator of one pair: both sides' figures and whether they disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub destination: String,
    pub origin: String,
    pub indicator: &'static str,
    pub assessed: Side,
    /// As the destination measured it (`None`: no statement from it).
    pub by_destination: Option<Figure>,
    pub by_origin: Option<Figure>,
    /// The items either side counts as missed, for drill-down.
    pub missed: Vec<String>,
}

impl Row {
    /// The two sides' counts differ, or one side sent no statement.
    pub fn disagrees(&self) -> bool {
        match (self.by_destination, self.by_origin) {
            (Some(d), Some(o)) => d != o,
            (None, None) => false,
            _ => true,
        }
    }
}

/// One region's score as the side it plays, from what its counterparts measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub node: String,
    pub side: Side,
    pub points: f64,
    /// Indicator, figure summed over the counterparts.
    pub figures: Vec<(&'static str, Figure)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    pub period: String,
    pub rows: Vec<Row>,
    pub scores: Vec<Score>,
    /// Nodes that gave no valid statement, and why.
    pub unavailable: Vec<(String, String)>,
}

/// The destination of a pair: the street office (the longer code), else the lower code.
fn order_pair(a: &str, b: &str) -> (String, String) {
    let a_first = a.len() > b.len() || (a.len() == b.len() && a < b);
    if a_first { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

fn figure(statement: Option<&pb::AssessmentStatement>, name: &str) -> Option<(Figure, Vec<String>)> {
    let i = statement?.indicators.iter().find(|i| i.name == name)?;
    Some((Figure { total: i.total, on_time: i.on_time, pending: i.pending }, i.missed.clone()))
}

/// Sets the statements side by side and scores every region.
pub fn rollup(period: &str, statements: &[pb::AssessmentStatement], weights: &Weights) -> Rollup {
    let mut by_pair: BTreeMap<(String, String), [Option<&pb::AssessmentStatement>; 2]> = BTreeMap::new();
    for s in statements.iter().filter(|s| s.period == period) {
        let (destination, origin) = order_pair(&s.node, &s.counterpart);
        let slot = by_pair.entry((destination.clone(), origin)).or_default();
        slot[usize::from(s.node != destination)] = Some(s);
    }
    let mut rows = Vec::new();
    for ((destination, origin), [by_d, by_o]) in &by_pair {
        for (name, side, _) in INDICATORS {
            let d = figure(*by_d, name);
            let o = figure(*by_o, name);
            let mut missed: Vec<String> = d.iter().chain(o.iter()).flat_map(|(_, m)| m.iter().cloned()).collect();
            missed.sort();
            missed.dedup();
            rows.push(Row {
                destination: destination.clone(),
                origin: origin.clone(),
                indicator: name,
                assessed: side,
                by_destination: d.map(|(f, _)| f),
                by_origin: o.map(|(f, _)| f),
                missed,
            });
        }
    }
    // Each region is scored by its counterparts: a destination on what origins measured,
    // an origin on what destinations measured.
    let mut sums: BTreeMap<(String, Side), BTreeMap<&'static str, Figure>> = BTreeMap::new();
    for row in &rows {
        let (node, measured) = match row.assessed {
            Side::Destination => (&row.destination, row.by_origin),
            Side::Origin => (&row.origin, row.by_destination),
        };
        let Some(f) = measured else { continue };
        let sum = sums.entry((node.clone(), row.assessed)).or_default().entry(row.indicator).or_default();
        sum.total += f.total;
        sum.on_time += f.on_time;
        sum.pending += f.pending;
    }
    let scores = sums
        .into_iter()
        .map(|((node, side), figures)| {
            let figures: Vec<_> = INDICATORS
                .iter()
                .filter(|(_, s, _)| *s == side)
                .map(|(n, _, _)| (*n, figures.get(n).copied().unwrap_or_default()))
                .collect();
            let points =
                figures.iter().map(|(n, f)| f64::from(weights.0.get(*n).copied().unwrap_or(0)) * f.rate()).sum();
            Score { node, side, points, figures }
        })
        .collect();
    Rollup { period: period.to_owned(), rows, scores, unavailable: Vec::new() }
}

/// Asks every node of the directory in `pki_dir` for its statements of `period` over
/// mutual TLS, as [`gather_from`] does, with channels opened for this one request.
pub async fn gather(
    pki_dir: &Path,
    period: &str,
    timeout: Duration,
) -> Result<(Vec<pb::AssessmentStatement>, Vec<(String, String)>), AssessError> {
    let directory =
        crate::directory::load(pki_dir)?.ok_or_else(|| AssessError::NoDirectory(pki_dir.display().to_string()))?;
    let nodes = Nodes::load(pki_dir)?;
    Ok(gather_from(&nodes, &directory, period, timeout).await)
}

/// Asks every node of `directory`, through `nodes`, for its statements of `period`, giving
/// each `timeout` to answer, and keeps those whose signature verifies against the node's
/// key in the directory. A node that cannot be asked, or whose statement does not verify,
/// is listed as unavailable and its side shows as missing.
pub async fn gather_from(
    nodes: &Nodes,
    directory: &Directory,
    period: &str,
    timeout: Duration,
) -> (Vec<pb::AssessmentStatement>, Vec<(String, String)>) {
    let mut asks = tokio::task::JoinSet::new();
    for entry in directory.entries() {
        let channel = nodes.channel(&entry.division, &entry.endpoint);
        let (division, period) = (entry.division.clone(), period.to_owned());
        let signing_key = directory.signing_key(&entry.division);
        asks.spawn(async move {
            let answer = match channel {
                Ok(channel) => tokio::time::timeout(timeout, ask(channel, &period))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}"))),
                Err(error) => Err(error),
            };
            let checked = answer.and_then(|statements| {
                let key = signing_key.ok_or("the directory has no signing key for it")?;
                for s in &statements {
                    if s.node != division {
                        return Err(format!("it sent a statement in the name of {}", s.node));
                    }
                    ldx_proto::report::verify_statement(s, &key)
                        .map_err(|_| format!("its statement about {} is not signed by its key", s.counterpart))?;
                }
                Ok(statements)
            });
            (division, checked)
        });
    }
    let (mut statements, mut unavailable) = (Vec::new(), Vec::new());
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((_, Ok(s))) => statements.extend(s),
            Ok((division, Err(why))) => unavailable.push((division, why)),
            Err(e) => unavailable.push((String::new(), e.to_string())),
        }
    }
    unavailable.sort();
    (statements, unavailable)
}

async fn ask(channel: Channel, period: &str) -> Result<Vec<pb::AssessmentStatement>, String> {
    let response = AssessmentClient::new(channel)
        .statements(pb::StatementsRequest { period: period.to_owned() })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().statements)
}

/// The rollup as the dashboard reads it: pairs, scores and the nodes that gave nothing.
#[derive(Debug, Serialize)]
pub struct RollupJson<'a> {
    period: &'a str,
    rows: Vec<RowJson<'a>>,
    scores: Vec<ScoreJson<'a>>,
    unavailable: Vec<UnavailableJson<'a>>,
}

#[derive(Debug, Serialize)]
struct RowJson<'a> {
    destination: &'a str,
    destination_name: &'static str,
    origin: &'a str,
    origin_name: &'static str,
    indicator: &'static str,
    label: &'static str,
    assessed: &'static str,
    by_destination: Option<FigureJson>,
    by_origin: Option<FigureJson>,
    disagree: bool,
    missed: &'a [String],
}

#[derive(Debug, Serialize)]
struct FigureJson {
    total: u64,
    on_time: u64,
    pending: u64,
}

impl From<Figure> for FigureJson {
    fn from(f: Figure) -> Self {
        Self { total: f.total, on_time: f.on_time, pending: f.pending }
    }
}

#[derive(Debug, Serialize)]
struct ScoreJson<'a> {
    node: &'a str,
    name: &'static str,
    side: &'static str,
    /// Rounded to a tenth of a point, as the tables show it.
    points: f64,
}

#[derive(Debug, Serialize)]
struct UnavailableJson<'a> {
    node: &'a str,
    why: &'a str,
}

/// The rollup as JSON for the dashboard. Missed items are pseudonymous (person keys,
/// report IDs); no name or ID number ever reaches the gateway.
pub fn json(r: &Rollup) -> RollupJson<'_> {
    RollupJson {
        period: &r.period,
        rows: r
            .rows
            .iter()
            .map(|row| RowJson {
                destination: &row.destination,
                destination_name: division_name(&row.destination),
                origin: &row.origin,
                origin_name: division_name(&row.origin),
                indicator: row.indicator,
                label: label_zh(row.indicator),
                assessed: row.assessed.name(),
                by_destination: row.by_destination.map(FigureJson::from),
                by_origin: row.by_origin.map(FigureJson::from),
                disagree: row.disagrees(),
                missed: &row.missed,
            })
            .collect(),
        scores: r
            .scores
            .iter()
            .map(|s| ScoreJson {
                node: &s.node,
                name: division_name(&s.node),
                side: s.side.name(),
                points: (s.points * 10.0).round() / 10.0,
            })
            .collect(),
        unavailable: r.unavailable.iter().map(|(node, why)| UnavailableJson { node, why }).collect(),
    }
}

fn show(f: Option<Figure>) -> String {
    f.map_or_else(|| "missing".to_owned(), |f| f.to_string())
}

/// The tables `ldx-gateway assess` prints.
pub fn render_text(r: &Rollup) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "two-way assessment 双向考核  {}", r.period);
    let _ = writeln!(out, "\npairs (destination measured | origin measured)");
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:<20} {:<12} {:<22} {:<22} FLAG",
        "DEST", "ORIGIN", "INDICATOR", "ASSESSED", "BY DESTINATION", "BY ORIGIN"
    );
    for row in &r.rows {
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<20} {:<12} {:<22} {:<22} {}",
            row.destination,
            row.origin,
            row.indicator,
            row.assessed.name(),
            show(row.by_destination),
            show(row.by_origin),
            if row.disagrees() { "DISAGREE" } else { "" }
        );
        if row.disagrees() || !row.missed.is_empty() {
            for item in &row.missed {
                let _ = writeln!(out, "{:<10} missed: {item}", "");
            }
        }
    }
    let _ = writeln!(out, "\nscores (of 1000, as measured by the counterparts)");
    let _ = writeln!(out, "{:<10} {:<12} {:>7}  DETAIL", "REGION", "AS", "SCORE");
    for s in &r.scores {
        let detail: Vec<String> = s.figures.iter().map(|(n, f)| format!("{n} {f}")).collect();
        let _ = writeln!(out, "{:<10} {:<12} {:>7.1}  {}", s.node, s.side.name(), s.points, detail.join(", "));
    }
    for (node, why) in &r.unavailable {
        let _ = writeln!(out, "\nno statement from {node}: {why}");
    }
    out
}

/// The same tables as CSV: the pair rows, a blank line, then the scores.
pub fn render_csv(r: &Rollup) -> String {
    let mut out = String::from(
        "period,destination,origin,indicator,assessed,dest_total,dest_on_time,dest_pending,origin_total,origin_on_time,origin_pending,disagree,missed\n",
    );
    let cells =
        |f: Option<Figure>| f.map_or_else(|| ",,".to_owned(), |f| format!("{},{},{}", f.total, f.on_time, f.pending));
    for row in &r.rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            r.period,
            row.destination,
            row.origin,
            row.indicator,
            row.assessed.name(),
            cells(row.by_destination),
            cells(row.by_origin),
            row.disagrees(),
            row.missed.join(" ")
        );
    }
    out.push_str("\nperiod,region,as,score");
    for (name, _, _) in INDICATORS {
        let _ = write!(out, ",{name}");
    }
    out.push('\n');
    for s in &r.scores {
        let _ = write!(out, "{},{},{},{:.1}", r.period, s.node, s.side.name(), s.points);
        for (name, _, _) in INDICATORS {
            match s.figures.iter().find(|(n, _)| *n == name) {
                Some((_, f)) => {
                    let _ = write!(out, ",{:.4}", f.rate());
                }
                None => out.push(','),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(node: &str, counterpart: &str, figures: &[(&str, u64, u64, u64)]) -> pb::AssessmentStatement {
        pb::AssessmentStatement {
            period: "2026Q1".into(),
            node: node.into(),
            counterpart: counterpart.into(),
            indicators: figures
                .iter()
                .map(|(name, total, on_time, pending)| pb::Indicator {
                    name: (*name).into(),
                    total: *total,
                    on_time: *on_time,
                    pending: *pending,
                    missed: (0..total - on_time - pending).map(|i| format!("{node}-{name}-{i}")).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn both_sides_stand_side_by_side_and_differences_are_flagged() {
        let statements = [
            statement("410103007", "411421", &[("notice_timeliness", 5, 3, 0), ("feedback_timeliness", 4, 3, 0)]),
            statement("411421", "410103007", &[("notice_timeliness", 4, 3, 0), ("feedback_timeliness", 4, 4, 0)]),
        ];
        let r = rollup("2026Q1", &statements, &Weights::default());
        let notice = r.rows.iter().find(|row| row.indicator == "notice_timeliness").unwrap();
        assert_eq!((notice.destination.as_str(), notice.origin.as_str()), ("410103007", "411421"));
        assert_eq!(notice.by_destination, Some(Figure { total: 5, on_time: 3, pending: 0 }));
        assert_eq!(notice.by_origin, Some(Figure { total: 4, on_time: 3, pending: 0 }));
        assert!(notice.disagrees());
        assert_eq!(notice.missed.len(), 3, "both sides' misses, for drill-down");
        let quality = r.rows.iter().find(|row| row.indicator == "report_quality").unwrap();
        assert!(!quality.disagrees(), "nothing counted on either side");

        // The destination is scored on what the origin measured: 3 of 4 notices on time.
        let dest = r.scores.iter().find(|s| s.node == "410103007").unwrap();
        assert_eq!(dest.side, Side::Destination);
        assert!((dest.points - (300.0 * 0.75 + 300.0 + 400.0)).abs() < 1e-9, "{dest:?}");
        let origin = r.scores.iter().find(|s| s.node == "411421").unwrap();
        assert!((origin.points - (400.0 * 0.75 + 400.0 + 200.0)).abs() < 1e-9, "{origin:?}");

        let text = render_text(&r);
        assert!(text.contains("DISAGREE") && text.contains("3/5") && text.contains("3/4"), "{text}");
        let json = serde_json::to_string(&json(&r)).unwrap();
        assert!(json.contains("\"indicator\":\"notice_timeliness\",\"label\":\"通报及时率\""), "{json}");
        assert!(json.contains("\"by_destination\":{\"total\":5,\"on_time\":3,\"pending\":0}"), "{json}");
        assert!(json.contains("\"name\":\"大学路街道\",\"side\":\"destination\",\"points\":925.0"), "{json}");
        let csv = render_csv(&r);
        assert!(csv.contains("2026Q1,410103007,411421,notice_timeliness,destination,5,3,0,4,3,0,true,"), "{csv}");
        assert!(csv.contains("2026Q1,410103007,destination,925.0,0.7500,"), "{csv}");
    }

    #[test]
    fn a_missing_side_is_a_disagreement_and_pending_items_are_not_counted_late() {
        let statements = [statement("410103007", "411421", &[("notice_timeliness", 3, 1, 2)])];
        let r = rollup("2026Q1", &statements, &Weights::default());
        let notice = r.rows.iter().find(|row| row.indicator == "notice_timeliness").unwrap();
        assert_eq!(notice.by_origin, None);
        assert!(notice.disagrees());
        assert_eq!(notice.by_destination.unwrap().rate(), 1.0, "1 of 1 decided on time, 2 pending");
        assert!(render_text(&r).contains("1/1 +2 pending"));
    }

    #[test]
    fn weights_come_from_a_file_and_unknown_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.toml");
        std::fs::write(&path, "[weights]\nnotice_timeliness = 500\n").unwrap();
        let w = Weights::load(&path).unwrap();
        assert_eq!(w.0["notice_timeliness"], 500);
        assert_eq!(w.0["report_return"], 300, "the others keep their default");
        std::fs::write(&path, "[weights]\nspeed = 1\n").unwrap();
        let err = Weights::load(&path).unwrap_err().to_string();
        assert!(err.contains("speed is not an indicator"), "{err}");
        let total: u32 = Weights::default().0.values().sum();
        assert_eq!(total, 2000, "1000 points per side");
    }
}
