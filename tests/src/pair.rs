//! Two registries in one process on one simulated clock: a street office and her origin
//! county, with the channel between them carried by hand. For rules that play out over
//! weeks or years (deadlines, the assessment, retention) in milliseconds.

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_node::clock::ManualClock;
use ldx_node::config::DeadlineConfig;
use ldx_node::crypto::{DataKey, FederationSalt, PersonKey};
use ldx_node::domain::Division;
use ldx_node::registry::{ExchangeHooks, Registry, ReportHooks, Router};
use ldx_node::storage::Store;
use ldx_proto::identity::SignKey;
use ldx_proto::v1 as pb;
use prost::Message;

pub const STREET: &str = "410103007";
pub const COUNTY: &str = "411421";

pub struct Pair {
    dirs: Vec<tempfile::TempDir>,
    clock: ManualClock,
    pub street: Registry,
    pub county: Registry,
    _woken: Vec<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

fn at(day: &str) -> chrono::DateTime<chrono::Utc> {
    format!("{day}T02:00:00Z").parse().unwrap()
}

impl Pair {
    pub fn new(today: &str) -> Self {
        let clock = ManualClock::new(at(today));
        let keys = [SignKey::generate(), SignKey::generate()];
        let public = [keys[0].public(), keys[1].public()];
        let (mut dirs, mut woken, mut registries) = (Vec::new(), Vec::new(), Vec::new());
        for (division, key) in [STREET, COUNTY].into_iter().zip(keys) {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), division, false).unwrap());
            let (wake, rx) = tokio::sync::mpsc::unbounded_channel();
            let router: Router =
                Arc::new(|code: &str| [STREET, COUNTY].into_iter().find(|d| code.starts_with(d)).map(str::to_owned));
            let registry = Registry::new(
                store,
                DataKey::from_bytes(&[3; 32]),
                FederationSalt::from_bytes([4; 32]),
                Arc::new(clock.clone()),
                Division::parse("division", division).unwrap(),
            )
            .unwrap()
            .with_exchange(ExchangeHooks { router, wake, deadlines: DeadlineConfig::default() })
            .with_reports(ReportHooks {
                signer: key,
                keys: Arc::new(move |d: &str| match d {
                    STREET => Some(public[0]),
                    COUNTY => Some(public[1]),
                    _ => None,
                }),
            });
            dirs.push(dir);
            woken.push(rx);
            registries.push(registry);
        }
        let county = registries.pop().unwrap();
        let street = registries.pop().unwrap();
        Self { dirs, clock, street, county, _woken: woken }
    }

    pub fn set_today(&self, day: &str) {
        self.clock.set(at(day));
    }

    /// The data directories of the street office and of the county.
    pub fn data_dirs(&self) -> [&Path; 2] {
        [self.dirs[0].path(), self.dirs[1].path()]
    }

    /// Carries everything pending on the channel `from -> to` and acks it.
    pub fn deliver(&self, from: &Registry, to: &Registry) {
        let (sender, receiver) = (from.division().as_str(), to.division().as_str());
        let state = from.outbound_to(receiver);
        let batch: Vec<_> = from
            .outbox_batch(receiver, state.acked_seq + 1, state.head_seq, 10_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| {
                let envelope = pb::Envelope::decode(bytes.as_slice()).unwrap();
                (bytes, envelope)
            })
            .collect();
        let outcome = to.apply_batch(sender, receiver, &batch).unwrap();
        from.ack(receiver, outcome.applied_seq).unwrap();
    }

    /// Both ways, street office first.
    pub fn exchange(&self) {
        self.deliver(&self.street, &self.county);
        self.deliver(&self.county, &self.street);
    }

    /// Registers the `n`th synthetic woman of the county at the street office.
    pub fn register(&self, n: u32, date: &str) {
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        let request = synthetic::person(COUNTY, n).move_in(STREET, date, pb::Category::MixedCommunity);
        self.street.move_in(&request).unwrap();
    }

    /// Her key at both nodes (one federation salt).
    pub fn person_key(n: u32) -> PersonKey {
        FederationSalt::from_bytes([4; 32]).person_key(&synthetic::person(COUNTY, n).id_number)
    }
}
