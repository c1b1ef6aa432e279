//! Joining a federation without hand edits: `ldx-gateway pki issue --bundle` at the district,
//! `ldx-node init --join` at the new node, and the node syncs with the others as soon as it
//! is in the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ldx_gateway::{directory, synthetic};
use ldx_tests::cluster::{Cluster, wait_until};

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const GATEWAY: &str = env!("CARGO_BIN_EXE_ldx-gateway-harness");
const ORIGIN: &str = "411421";
const JOINER: &str = "410103007";
const TIMEOUT: Duration = Duration::from_secs(60);

fn run(bin: &str, args: &[&str]) -> Output {
    let mut command = Command::new(bin);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LDX_")) {
        command.env_remove(key);
    }
    command.args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Kills the node when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_addr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn status_json(config: &Path) -> Option<serde_json::Value> {
    let token = config.with_file_name("lab.session");
    let args = ["status", "--json", "--config", config.to_str().unwrap(), "--token-file", token.to_str().unwrap()];
    let out = run(NODE, &args);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_from_one_bundle_and_syncs() {
    let cluster = Cluster::builder().nodes([ORIGIN]).start().await.unwrap();
    let pki = cluster.pki_dir().to_str().unwrap().to_owned();
    let gateway = cluster.gateway_endpoint().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("410103007.join");
    let bundle_arg = bundle.to_str().unwrap();

    // At the district: a bad gateway address is refused before anything is issued.
    let out = run(
        GATEWAY,
        &["pki", "issue", "--pki", &pki, "--division", JOINER, "--bundle", bundle_arg, "--gateway", "10.0.0.1"],
    );
    assert!(!out.status.success() && text(&out).contains("gateway"), "{}", text(&out));
    assert!(!cluster.pki_dir().join("nodes").join(JOINER).exists(), "nothing issued on a bad address");

    let out = run(
        GATEWAY,
        &["pki", "issue", "--pki", &pki, "--division", JOINER, "--bundle", bundle_arg, "--gateway", &gateway],
    );
    assert!(out.status.success(), "{}", text(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // At the node: the bundle of another division is refused and leaves nothing behind.
    let wrong = work.path().join("wrong");
    let out = run(NODE, &["init", "--division", "410103008", "--dir", wrong.to_str().unwrap(), "--join", bundle_arg]);
    assert!(!out.status.success() && text(&out).contains("issued to 410103007"), "{}", text(&out));
    assert!(!wrong.join("pki").exists() && !wrong.join("ldx-node.toml").exists());

    let dir: PathBuf = work.path().join("node");
    let dir_arg = dir.to_str().unwrap();
    let out = run(
        NODE,
        &[
            "init",
            "--division",
            JOINER,
            "--dir",
            dir_arg,
            "--join",
            bundle_arg,
            "--api-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = dir.join("ldx-node.toml");
    let config_arg = config.to_str().unwrap();
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains(&format!("gateway = \"{gateway}\"")), "{written}");

    // Its first clerk is added on the host before the first start, as README says.
    ldx_tests::staff::provision(&config).unwrap();

    // It runs with no file copied or edited, takes the directory, and answers health.
    let log = std::fs::File::create(work.path().join("node.log")).unwrap();
    let child = Command::new(NODE)
        .args(["run", "--config", config_arg])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _node = Running(child);
    let run_dir = dir.join("data").join("run");
    wait_until(TIMEOUT, "the joined node listens", async || {
        read_addr(&run_dir.join("api.addr")).is_some() && read_addr(&run_dir.join("peer.addr")).is_some()
    })
    .await
    .unwrap();
    wait_until(TIMEOUT, "the joined node is healthy", async || {
        run(NODE, &["health", "--config", config_arg]).status.success()
    })
    .await
    .unwrap();
    let password = ldx_tests::staff::password_file(&config);
    let token = config.with_file_name("lab.session");
    let login = [
        "login",
        ldx_tests::staff::LAB_STAFF,
        "--password-file",
        password.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--config",
        config_arg,
    ];
    let out = run(NODE, &login);
    assert!(out.status.success(), "{}", text(&out));

    // The district lists it; the new node and the origin then find each other.
    let peer = read_addr(&run_dir.join("peer.addr")).unwrap();
    let issued = cluster.pki_dir().join("nodes").join(JOINER);
    let published = directory::add(
        cluster.pki_dir(),
        JOINER,
        &format!("https://{peer}"),
        &issued.join("node.crt"),
        &issued.join("signing.pub"),
    )
    .unwrap();
    cluster.wait_for_directory(published.version()).await.unwrap();
    wait_until(TIMEOUT, "the joined node has the directory", async || {
        status_json(&config).is_some_and(|s| s["directory_version"].as_u64() == Some(published.version()))
    })
    .await
    .unwrap();

    // A move-in there reaches her origin.
    let person = synthetic::person(ORIGIN, 1);
    let request = person.move_in(JOINER, chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(), synthetic::category(1));
    let api = read_addr(&run_dir.join("api.addr")).unwrap();
    let token = ldx_tests::staff::login(&format!("http://{api}")).await.unwrap();
    let mut client = ldx_tests::staff::registry_at(&format!("http://{api}"), &token).await.unwrap();
    client.register_move_in(request.clone()).await.unwrap();
    wait_until(TIMEOUT, "the move-in notice is acked by the origin", async || {
        status_json(&config).is_some_and(|s| {
            s["outbound"].as_array().is_some_and(|out| {
                out.iter().any(|c| c["peer"] == ORIGIN && c["head_seq"].as_u64() > Some(0) && c["pending"] == 0)
            })
        })
    })
    .await
    .unwrap();
    let mut origin = cluster.node(ORIGIN).registry().await.unwrap();
    let known = origin
        .get_person(ldx_proto::v1::GetPersonRequest { id_number: request.id_number.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(known.person.is_some(), "her origin knows of her move-in");
}
