//! The staff API beyond loopback: a node refuses to listen on a non-loopback address
//! without TLS, naming the config key; with TLS it serves only TLS, and the CLI reaches it
//! over TLS, checking its certificate against the federation CA.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ldx_gateway::pki;
use ldx_proto::v1 as pb;
use ldx_tests::{Federation, TestNode};

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const DIVISION: &str = "410103007";

/// A proxy on loopback to `upstream` that appends every byte it carries, both ways, to
/// the returned buffer.
async fn recording_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = wire.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (client, server) = (client.into_split(), server.into_split());
            for (mut from, mut to) in [(client.0, server.1), (server.0, client.1)] {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (addr, wire)
}

/// Rewrites the `[api]` section of `node`'s config to `api`.
fn set_api(node: &TestNode, api: &str) {
    let path = node.config();
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[api]").expect("the starter config has an [api] section");
    let end = text[start + 5..].find("\n[").map_or(text.len(), |i| start + 5 + i + 1);
    let replaced = format!("{}[api]\n{api}\n{}", &text[..start], &text[end..]);
    std::fs::write(&path, replaced).unwrap();
}

fn run(node: &TestNode) -> Command {
    let mut command = Command::new(NODE);
    command.arg("run").arg("--config").arg(node.config()).env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

#[test]
fn a_staff_api_beyond_loopback_without_tls_is_refused_at_start() {
    let federation = Federation::new().unwrap();
    let node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    set_api(&node, "listen = \"0.0.0.0:0\"");
    let out = run(&node).output().unwrap();
    assert!(!out.status.success(), "the node started without TLS on 0.0.0.0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.tls_cert_file"), "{stderr}");
    assert!(stderr.contains("is not a loopback address"), "{stderr}");

    // A certificate without its key is refused too, naming the missing key.
    set_api(&node, "listen = \"127.0.0.1:0\"\ntls_cert_file = \"some.crt\"");
    let out = run(&node).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api.tls_key_file") && stderr.contains("must be set when api.tls_cert_file is"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_the_cli_reaches_the_staff_api_and_plain_http_does_not() {
    let federation = Federation::new().unwrap();
    let node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    let pki_dir = federation.root().join("pki");
    pki::init(&pki_dir).unwrap();
    let issued = pki::issue(&pki_dir, DIVISION).unwrap();
    let ca = pki_dir.join(pki::CA_CERT);
    set_api(
        &node,
        &format!(
            "listen = \"0.0.0.0:0\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\ntls_ca_file = {:?}",
            issued.cert_path, issued.key_path, ca
        ),
    );
    let log = std::fs::File::create(node.log_file()).unwrap();
    let mut child = run(&node).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let addr_file = node.data_dir().join("run").join("api.addr");

    // Ready when the CLI's health check, over TLS, says SERVING.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the node exited:\n{}", node.log());
        if addr_file.exists() && node.cli(&["health"]).status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served over TLS:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log().contains("tls=true"), "{}", node.log());

    // The clerk logs in over TLS; the session token is kept for the later commands.
    let out = node.login_cli();
    assert!(out.status.success(), "login over TLS: {}", String::from_utf8_lossy(&out.stderr));

    // Logging in again through a proxy that records every byte both ways: neither the
    // password nor the session token crosses the wire in clear.
    let upstream = std::fs::read_to_string(&addr_file).unwrap().trim().parse().unwrap();
    let (proxy, wire) = recording_proxy(upstream).await;
    let password_file = ldx_tests::staff::password_file(&node.config());
    let out = tokio::task::spawn_blocking({
        let (node_bin, config, token) = (NODE, node.config(), node.token_file());
        let password_file = password_file.clone();
        move || {
            Command::new(node_bin)
                .args(["login", ldx_tests::staff::LAB_STAFF, "--endpoint", &format!("https://{proxy}"), "--config"])
                .arg(config)
                .arg("--password-file")
                .arg(password_file)
                .env("LDX_TOKEN_FILE", token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "login through the proxy: {}", String::from_utf8_lossy(&out.stderr));
    let wire = wire.lock().unwrap().clone();
    let password = std::fs::read_to_string(&password_file).unwrap();
    let token = std::fs::read_to_string(node.token_file()).unwrap();
    assert!(wire.len() > 1000 && wire[0] == 0x16, "the recording holds a TLS handshake ({} bytes)", wire.len());
    for (what, secret) in [("password", password.trim()), ("session token", token.trim())] {
        assert!(secret.len() >= 12, "{what} is long enough to be found");
        assert!(!wire.windows(secret.len()).any(|w| w == secret.as_bytes()), "the {what} crossed the wire in clear");
    }

    let person = ldx_gateway::synthetic::person("411421", 1);
    let id =
        person.move_in(DIVISION, chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(), pb::Category::MixedCommunity);
    let out = node.cli(&[
        "person",
        "add",
        "--id",
        &id.id_number,
        "--name",
        &id.name,
        "--category",
        "mixed-community",
        "--role",
        "residence",
        "--address",
        &id.address,
        "--date",
        "2026-03-01",
    ]);
    assert!(out.status.success(), "person add over TLS: {}", String::from_utf8_lossy(&out.stderr));
    let out = node.cli(&["person", "show", &id.id_number]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id.name));

    // The same port in plain HTTP/2 gets nothing.
    let addr = std::fs::read_to_string(&addr_file).unwrap().trim().to_owned();
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await?;
        let mut client = pb::registry_client::RegistryClient::new(channel);
        client
            .get_person(pb::GetPersonRequest { id_number: id.id_number.clone() })
            .await
            .map_err(|s| anyhow::anyhow!("{s:?}"))
            .map(|_| ())
    })
    .await;
    assert!(!matches!(plain, Ok(Ok(()))), "a plaintext client was answered: {plain:?}");

    // A CLI that trusts another CA refuses the node's certificate.
    let foreign = federation.root().join("foreign-pki");
    pki::init(&foreign).unwrap();
    let out = Command::new(NODE)
        .args(["person", "show", &id.id_number, "--config"])
        .arg(node.config())
        .env("LDX_API__TLS_CA_FILE", foreign.join(pki::CA_CERT))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a CLI trusting another CA was answered");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the node") && stderr.contains("certificate"), "{stderr}");

    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the node did not stop cleanly:\n{}", node.log());
}
