//! People in the node, between real node processes and through the `ldx-node` CLI as
//! clerks use it: accounts by role at a street office and at an origin county, what each
//! role may do and see, every refusal named and audited, and `audit list --person`
//! answering who touched her record, when and for what.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::cluster::{Cluster, ClusterNode, wait_until};
use serde_json::Value;

const RESIDENCE: &str = "410103007";
const ORIGIN: &str = "411421";
/// A township of the origin county: 绿洲街道.
const TOWNSHIP: &str = "411421001";
const WAIT: Duration = Duration::from_secs(60);

/// A clerk logged in at one node, with a session token file of her own.
struct Clerk<'a> {
    node: &'a ClusterNode,
    name: String,
    token: PathBuf,
}

impl Clerk<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.node.cli_command(args).env("LDX_TOKEN_FILE", &self.token).output().expect("ldx-node runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{} {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a call that must be refused; returns the error it printed.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{} {args:?} was allowed: {}", self.name, String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn password_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.password"));
    std::fs::write(&path, format!("synthetic password of {name}\n")).unwrap();
    path
}

/// The harness's admin account adds `name` with `roles` (and options) at `node`, and she
/// logs in.
fn add_clerk<'a>(node: &'a ClusterNode, dir: &Path, name: &str, extra: &[&str]) -> Clerk<'a> {
    let password = password_file(dir, name);
    let mut args = vec!["staff", "add", name, "--password-file", password.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = node.cli(&args);
    assert!(out.status.success(), "staff add {name}: {}", String::from_utf8_lossy(&out.stderr));
    let clerk = Clerk { node, name: name.to_owned(), token: dir.join(format!("{name}-{}.session", node.division())) };
    clerk.ok(&["login", name, "--password-file", password.to_str().unwrap()]);
    clerk
}

fn move_in_args(p: &pb::RegisterMoveInRequest) -> Vec<String> {
    let mut args = vec![
        "person",
        "add",
        "--id",
        &p.id_number,
        "--name",
        &p.name,
        "--phone",
        &p.phone,
        "--category",
        "mixed-community",
        "--address",
        &p.address,
        "--date",
        &p.date,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if !p.household_division.is_empty() {
        args.extend(["--household-division".to_owned(), p.household_division.clone()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_does_what_it_may_and_the_audit_names_who() -> anyhow::Result<()> {
    let cluster = Cluster::builder().nodes([RESIDENCE, ORIGIN]).start().await?;
    let (residence, origin) = (cluster.node(RESIDENCE), cluster.node(ORIGIN));
    let dir = tempfile::tempdir()?;
    let dir = dir.path();

    // Accounts at the street office: the three posts, an auditor, an admin, and the
    // registrar's AB backup.
    let reg = add_clerk(residence, dir, "reg", &["--role", "registrar"]);
    let ver = add_clerk(residence, dir, "ver", &["--role", "verifier"]);
    let pol = add_clerk(residence, dir, "pol", &["--role", "police-liaison"]);
    let aud = add_clerk(residence, dir, "aud", &["--role", "auditor"]);
    let adm = add_clerk(residence, dir, "adm", &["--role", "admin"]);
    let dep = add_clerk(residence, dir, "dep", &["--role", "police-liaison", "--deputy-of", "reg"]);

    // The registrar registers two in-migrants; one's household is in the township.
    let moved_in = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let mut a = synthetic::person(ORIGIN, 1).move_in(RESIDENCE, moved_in, pb::Category::MixedCommunity);
    a.household_division = TOWNSHIP.into();
    let b = synthetic::person(ORIGIN, 2).move_in(RESIDENCE, moved_in, pb::Category::MixedCommunity);
    for p in [&a, &b] {
        let args = move_in_args(p);
        reg.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let id = a.id_number.as_str();

    // The police liaison sees identity and address only, in the answer itself.
    let seen = pol.json(&["person", "show", id]);
    assert_eq!(seen["name"], a.name.as_str());
    assert_eq!(seen["address"], a.address.as_str());
    assert_eq!(seen["phone"], "", "{seen}");
    assert!(seen["services"].as_array().is_none_or(Vec::is_empty), "{seen}");
    let listed = pol.json(&["person", "list"]);
    let persons = listed["persons"].as_array().unwrap();
    assert_eq!(persons.len(), 2);
    assert!(persons.iter().all(|p| p["phone"] == ""), "{listed}");
    let e = pol.refused(&["service", "add", id, "--date", "2026-03-10"]);
    assert!(e.contains("PermissionDenied") && e.contains("needs the role registrar"), "{e}");
    let e = pol.refused(&["report", "list"]);
    assert!(e.contains("PermissionDenied"), "{e}");

    // The verifier reads her whole record; the admin reads nothing personal.
    let full = ver.json(&["person", "show", id]);
    assert_eq!(full["phone"], a.phone.as_str());
    let e = adm.refused(&["person", "show", id]);
    assert!(e.contains("PermissionDenied") && e.contains("account \"adm\" (roles admin)"), "{e}");
    // Retention is the admin's: a dry run lists nobody yet (no one has moved out); a
    // registrar may not run it.
    let dry = adm.json(&["retention", "run", "--dry-run"]);
    assert_eq!((dry["dry_run"].as_bool(), dry["total"].as_u64()), (Some(true), Some(0)), "{dry}");
    let e = reg.refused(&["retention", "run"]);
    assert!(e.contains("PermissionDenied") && e.contains("needs the role admin"), "{e}");

    // Services by the registrar, then by her deputy once (and only once) she is absent.
    reg.ok(&["service", "add", id, "--date", "2026-03-10", "--details", "check"]);
    let e = dep.refused(&["service", "add", id, "--date", "2026-03-11"]);
    assert!(e.contains("only while it is marked absent"), "{e}");
    adm.ok(&["staff", "absent", "reg"]);
    dep.ok(&["service", "add", id, "--date", "2026-03-11", "--details", "check"]);
    adm.ok(&["staff", "present", "reg"]);

    // Sessions: none, forged, another node's, a disabled account, a locked one.
    let none = Clerk { node: residence, name: "nobody".into(), token: dir.join("missing.session") };
    let e = none.refused(&["person", "show", id]);
    assert!(e.contains("Unauthenticated") && e.contains("no session token"), "{e}");
    let mut forged = std::fs::read_to_string(&reg.token)?;
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    std::fs::write(dir.join("forged.session"), forged)?;
    let forger = Clerk { node: residence, name: "forger".into(), token: dir.join("forged.session") };
    let e = forger.refused(&["person", "show", id]);
    assert!(e.contains("Unauthenticated") && e.contains("signature does not match"), "{e}");
    let clerk = add_clerk(origin, dir, "clerk", &["--role", "township-clerk", "--township", TOWNSHIP]);
    let stranger = Clerk { node: residence, name: "stranger".into(), token: clerk.token.clone() };
    let e = stranger.refused(&["person", "show", id]);
    assert!(e.contains("Unauthenticated") && e.contains(&format!("issued by node {ORIGIN}")), "{e}");
    adm.ok(&["staff", "disable", "pol"]);
    let e = pol.refused(&["person", "show", id]);
    assert!(e.contains("Unauthenticated") && e.contains("session has ended"), "{e}");
    let pol_password = dir.join("pol.password");
    let e = pol.refused(&["login", "pol", "--password-file", pol_password.to_str().unwrap()]);
    assert!(e.contains("disabled"), "{e}");
    let wrong = password_file(dir, "not-ver");
    for _ in 0..5 {
        let e = ver.refused(&["login", "ver", "--password-file", wrong.to_str().unwrap()]);
        assert!(e.contains("wrong name or password"), "{e}");
    }
    let right = dir.join("ver.password");
    let e = ver.refused(&["login", "ver", "--password-file", right.to_str().unwrap()]);
    assert!(e.contains("locked after 5 failed log-ins"), "{e}");

    // At her origin: a township clerk sees her township only; a registrar may not verify.
    wait_until(WAIT, "her origin has both records", async || origin.list_persons().await.is_ok_and(|p| p.len() == 2))
        .await?;
    assert_eq!(clerk.json(&["person", "show", id])["id_number"], id);
    let e = clerk.refused(&["person", "show", &b.id_number]);
    assert!(e.contains("PermissionDenied") && e.contains(&format!("not registered in township {TOWNSHIP}")), "{e}");
    let listed = clerk.json(&["person", "list"]);
    let ids: Vec<_> = listed["persons"].as_array().unwrap().iter().map(|p| p["id_number"].clone()).collect();
    assert_eq!(ids, [Value::from(id)]);
    let e = clerk.refused(&["person", "list", "--township", "411421002"]);
    assert!(e.contains("PermissionDenied"), "{e}");
    let reg2 = add_clerk(origin, dir, "reg2", &["--role", "registrar"]);
    let e = reg2.refused(&["report", "verify", "R-1", "--accept"]);
    assert!(e.contains("PermissionDenied") && e.contains("needs the role verifier or township-clerk"), "{e}");

    // Who touched her record at the street office, exactly, with names and purposes.
    let entries = aud.json(&["audit", "list", "--person", id]);
    let by_staff: Vec<(String, String, String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["staff"] != "node")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("staff"), s("acting_for"), s("action"), s("purpose"))
        })
        .collect();
    let expect = |staff: &str, acting_for: &str, action: &str, purpose: &str| {
        (staff.to_owned(), acting_for.to_owned(), action.to_owned(), purpose.to_owned())
    };
    assert_eq!(
        by_staff,
        [
            expect("reg", "", "move_in", "registration"),
            expect("pol", "", "read", "identity-check"),
            expect("pol", "", "list", "identity-check"),
            expect("ver", "", "read", "case-work"),
            expect("reg", "", "record_service", "registration"),
            expect("dep", "reg", "record_service", "registration"),
        ],
        "{entries:#}"
    );
    // The refusals are in the log too, each with its rule.
    let refusals = aud.json(&["audit", "list", "--staff", "pol"]);
    let refused: Vec<_> = refusals
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "refused" || e["action"] == "login_failed")
        .collect();
    assert!(refused.iter().any(|e| e["detail"].as_str().unwrap().contains("needs the role registrar")), "{refusals:#}");
    assert!(refused.iter().any(|e| e["action"] == "login_failed"), "{refusals:#}");
    let everything = aud.json(&["audit", "list"]);
    let rules: Vec<_> = everything.as_array().unwrap().iter().filter_map(|e| e["detail"].as_str()).collect();
    for rule in ["no session token", "signature does not match", "issued by node", "session has ended", "locked"] {
        assert!(rules.iter().any(|r| r.contains(rule)), "no audited refusal for {rule:?}: {rules:#?}");
    }
    // The auditor reads no personal field.
    let e = aud.refused(&["person", "show", id]);
    assert!(e.contains("PermissionDenied"), "{e}");
    Ok(())
}
