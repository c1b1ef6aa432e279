//! Who a change is made for: the staff account of the API call being served, carried to
//! the audit entries the registry writes for it.
//!
//! The gRPC layer authenticates a call and runs the registry work inside [`acting`]; every
//! audit entry prepared on that thread meanwhile names the actor. Work the node does on
//! its own (a peer's envelope, a schedule) runs outside it and is audited as the node's.

use std::cell::RefCell;

/// The account behind one API call, as its audit entries name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub staff: String,
    /// The absent account `staff` acts for as its deputy (empty when acting as herself).
    pub acting_for: String,
    /// The role whose scope allowed the call.
    pub role: String,
    pub purpose: String,
    /// The API call, e.g. `/ldx.v1.Registry/GetPerson`.
    pub call: String,
}

thread_local! {
    static CURRENT: RefCell<Option<Actor>> = const { RefCell::new(None) };
}

/// Runs `work` with `actor` as the one its audit entries name; the previous actor (if
/// any) is back afterwards, also when `work` panics.
pub fn acting<T>(actor: Actor, work: impl FnOnce() -> T) -> T {
    struct Restore(Option<Actor>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(actor)));
    work()
}

/// The actor of the call this thread serves, if any.
pub fn current() -> Option<Actor> {
    CURRENT.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_holds_inside_and_is_gone_after() {
        assert_eq!(current(), None);
        let a = Actor { staff: "li.na".into(), ..Default::default() };
        let seen = acting(a.clone(), current);
        assert_eq!(seen, Some(a.clone()));
        assert_eq!(current(), None);
        let inner = Actor { staff: "wang.fang".into(), ..Default::default() };
        let both = acting(a.clone(), || (acting(inner.clone(), current), current()));
        assert_eq!(both, (Some(inner), Some(a)));
        let _ = std::panic::catch_unwind(|| acting(Actor::default(), || panic!("refused")));
        assert_eq!(current(), None);
    }
}
