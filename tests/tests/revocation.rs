//! A revoked node is refused by every node within one directory poll, on connections
//! already open too: `ldx-gateway pki revoke` removes its entry and lists its certificate's
//! SHA-256 as revoked in the signed directory; receivers re-check the sender's certificate
//! against the current directory on every batch, and senders the receiver's.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use ldx_gateway::{directory, synthetic};
use ldx_proto::v1 as pb;
use ldx_tests::cluster::{Cluster, ClusterNode, wait_until};

const DAXUELU: &str = "410103007";
const MINGGONGLU: &str = "410103003";
const MINQUAN: &str = "411421";
const TIMEOUT: Duration = Duration::from_secs(30);

async fn move_in(node: &ClusterNode, n: u32) -> String {
    let person = synthetic::person(MINQUAN, n);
    let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let req = person.move_in(node.division(), date, pb::Category::MixedCommunity);
    node.registry().await.unwrap().register_move_in(req).await.unwrap();
    person.id_number
}

async fn outbound(node: &ClusterNode, peer: &str) -> pb::OutboundChannel {
    let status = node.status().await.unwrap();
    status.outbound.into_iter().find(|c| c.peer == peer).unwrap_or_default()
}

async fn arrives(node: &ClusterNode, id: &str) {
    wait_until(TIMEOUT, &format!("{id} arrives at {}", node.division()), async || {
        node.person(id).await.is_ok_and(|p| p.is_some())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_within_one_poll_on_open_connections_too() {
    let mut cluster = Cluster::builder().nodes([DAXUELU, MINGGONGLU, MINQUAN]).start().await.unwrap();
    // Both street offices have channels open to the origin and back.
    for (node, n) in [(DAXUELU, 1), (MINGGONGLU, 2)] {
        let id = move_in(cluster.node(node), n).await;
        arrives(cluster.node(MINQUAN), &id).await;
        wait_until(TIMEOUT, "feedback back", async || outbound(cluster.node(MINQUAN), node).await.pending == 0)
            .await
            .unwrap();
    }

    // 大学路's certificate is revoked. Once the nodes have the new version, the origin takes
    // nothing more from it, although its connection is open.
    let revoked_at = Instant::now();
    let (version, fingerprint) = directory::revoke(cluster.pki_dir(), DAXUELU).unwrap();
    assert!(version.is_revoked(&fingerprint) && version.get(DAXUELU).is_none());
    cluster.wait_for_directory(version.version()).await.unwrap();
    let late = move_in(cluster.node(DAXUELU), 3).await;
    wait_until(TIMEOUT, "大学路's batch refused", async || {
        outbound(cluster.node(DAXUELU), MINQUAN).await.last_error.contains("not listed")
    })
    .await
    .unwrap();
    let refused_after = revoked_at.elapsed();
    assert!(cluster.node(MINQUAN).person(&late).await.unwrap().is_none(), "nothing from a revoked node is applied");
    assert_eq!(outbound(cluster.node(DAXUELU), MINQUAN).await.pending, 1, "kept, not lost, at the sender");
    println!("revoked node refused {refused_after:.1?} after the revocation (directory poll 200 ms)");

    // 铭功路 still syncs with the origin.
    let fine = move_in(cluster.node(MINGGONGLU), 4).await;
    arrives(cluster.node(MINQUAN), &fine).await;

    // Now the origin's certificate is revoked: 铭功路 sends it nothing more over the
    // connection it has open, since the directory no longer pins that certificate.
    let (version, _) = directory::revoke(cluster.pki_dir(), MINQUAN).unwrap();
    cluster.wait_for_directory(version.version()).await.unwrap();
    let held = move_in(cluster.node(MINGGONGLU), 5).await;
    wait_until(TIMEOUT, "铭功路 stops sending to the revoked origin", async || {
        !outbound(cluster.node(MINGGONGLU), MINQUAN).await.last_error.is_empty()
    })
    .await
    .unwrap();
    assert!(cluster.node(MINQUAN).person(&held).await.unwrap().is_none());
    assert_eq!(outbound(cluster.node(MINGGONGLU), MINQUAN).await.pending, 1);
    cluster.stop_gateway().await.unwrap();
}
