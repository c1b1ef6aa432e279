//! A full disk. Writes used to fail cleanly, but after space was freed every call, reads
//! too, still failed and health still said SERVING until a restart. Now a node keeps a
//! reserve of free space (changes are refused below it, before they are tried), reports
//! NOT_SERVING while it cannot take changes, and takes changes again by itself when space
//! returns. Should the disk fill past the reserve anyway (filled by something else faster
//! than the node checks), RocksDB's failed WAL write does not resume: the node then closes
//! its store and opens it again by itself, in the same process and on the same listeners.
//! Nothing it acknowledged is lost.
//!
//! The node's data directory is a small tmpfs, which needs root (as CI runs); elsewhere the
//! test says it cannot run and fails, rather than pass without testing anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::cluster::wait_until;
use ldx_tests::{Federation, TestNode, all_persons, serving_service};
use tonic::Code;

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const DIVISION: &str = "410103007";
const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs for the node's data needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `filler` until at most `leave` bytes are free (0:
/// until a write fails for lack of space).
fn fill(filler: &Path, leave: u64) {
    let mut file = std::fs::File::create(filler).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    loop {
        let free = fs_free(filler.parent().unwrap());
        if leave > 0 && free <= leave {
            break;
        }
        let n = if leave > 0 { chunk.len().min((free - leave) as usize) } else { chunk.len() };
        match file.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let _ = file.flush();
    }
    let _ = file.sync_all();
}

fn fs_free(dir: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

fn move_in(n: u32) -> pb::RegisterMoveInRequest {
    let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    synthetic::person("411421", n).move_in(DIVISION, date, synthetic::category(n))
}

fn set_reserve(node: &TestNode, mb: u64) {
    let text = std::fs::read_to_string(node.config()).unwrap();
    let mut lines: Vec<String> = text.lines().filter(|l| !l.starts_with("reserve_mb")).map(str::to_owned).collect();
    let at = lines.iter().position(|l| l == "[storage]").unwrap() + 1;
    lines.insert(at, format!("reserve_mb = {mb}"));
    std::fs::write(node.config(), lines.join("\n") + "\n").unwrap();
}

async fn health_says(node: &TestNode, serving: bool) -> bool {
    serving_service(node.endpoint(), "").await == serving
}

/// Registers move-ins from `from` on until one is refused; returns the next number and the
/// refusal.
async fn register_until_refused(node: &TestNode, from: u32) -> (u32, tonic::Status) {
    let mut client = node.registry().await.unwrap();
    for n in from.. {
        if let Err(status) = client.register_move_in(move_in(n)).await {
            return (n, status);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_reports_it_and_recovers_by_itself() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    let _tmpfs = Tmpfs::mount(&node.data_dir(), 48);
    // The harness's staff account lives in the data directory the mount hides.
    ldx_tests::staff::provision_again(&node.config()).unwrap();
    let filler = node.data_dir().join("filler");

    // The reserve: below 8 MB free, changes are refused before RocksDB is asked.
    set_reserve(&node, 8);
    node.start().await.unwrap();
    let mut client = node.registry().await.unwrap();
    for n in 0..50 {
        client.register_move_in(move_in(n)).await.unwrap();
    }
    fill(&filler, 4 << 20);
    let waited =
        wait_until(WAIT, "health says NOT_SERVING below the reserve", async || health_says(&node, false).await)
            .await
            .unwrap();
    let (next, status) = register_until_refused(&node, 50).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("disk is almost full") && status.message().contains("nothing was stored"),
        "{}",
        status.message()
    );
    assert_eq!(next, 50, "refused before it was tried");
    println!("below the reserve: NOT_SERVING within {waited:.2?}; refused: {}", status.message());
    // Reads still answer.
    assert_eq!(all_persons(&node).await.len(), 50);
    std::fs::remove_file(&filler).unwrap();
    let waited = wait_until(WAIT, "health says SERVING once space is back", async || health_says(&node, true).await)
        .await
        .unwrap();
    client.register_move_in(move_in(50)).await.unwrap();
    println!("space back: SERVING within {waited:.2?}");

    // No reserve: the disk really fills and RocksDB's writes fail.
    assert!(node.stop().await.unwrap());
    set_reserve(&node, 0);
    node.start().await.unwrap();
    fill(&filler, 0);
    let (next, status) = register_until_refused(&node, 51).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    println!("disk full after {} more move-ins: {}", next - 51, status.message());
    let waited =
        wait_until(WAIT, "health says NOT_SERVING while writes fail", async || health_says(&node, false).await)
            .await
            .unwrap();
    println!("writes failing: NOT_SERVING within {waited:.2?}");
    // RocksDB does not resume after a failed WAL write: once space is back and writes
    // still fail, the node closes its store and opens it again by itself (recovering from
    // its log as at a start), on the same listeners, with no supervisor involved.
    std::fs::remove_file(&filler).unwrap();
    let waited = wait_until(WAIT, "the node reopens its store and says SERVING again", async || {
        assert!(node.exited().is_none(), "the node exited instead of reopening its store:\n{}", node.log());
        node.log().contains("it was closed and is opened again") && health_says(&node, true).await
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", node.log()));
    println!("space freed: the store reopened in place, SERVING within {waited:.2?}");
    node.registry().await.unwrap().register_move_in(move_in(next)).await.unwrap();
    assert!(node.exited().is_none());

    // Everything acknowledged is there, after a restart too.
    let expected = next as usize + 1;
    assert_eq!(all_persons(&node).await.len(), expected);
    assert!(node.stop().await.unwrap());
    node.start().await.unwrap();
    assert_eq!(all_persons(&node).await.len(), expected);
}
