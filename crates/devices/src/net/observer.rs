//! The data path's hook for [`AddressLearner`]: the `v_net` worker owns the learner and feeds
//! it every frame; the host reads what it learned through an [`AddressWatch`].
//!
//! The learner is not shared with readers directly: that would put a lock the API thread can
//! hold on every frame's path. Instead the worker publishes a copy only when the learner's
//! generation changes (rarely: a DHCP lease, a new IPv6 address), so the per-frame cost is the
//! parse alone. A multiqueue card's pairs share one learner (a guest may send its DHCP request
//! on one pair and get the ACK on another); its lock is only ever taken by those workers.

use std::sync::{Arc, Mutex};

use super::address::{AddressLearner, GuestAddresses};

/// What the host reads: the addresses the NIC's learner last published.
#[derive(Debug, Clone, Default)]
pub struct AddressWatch(Arc<Mutex<GuestAddresses>>);

impl AddressWatch {
    /// The addresses learned so far (none before the guest's first frames).
    pub fn get(&self) -> GuestAddresses {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The workers' side: the learner and where it publishes.
#[derive(Debug, Clone)]
pub(crate) struct AddressObserver {
    learner: Arc<Mutex<AddressLearner>>,
    published: AddressWatch,
}

impl AddressObserver {
    pub(crate) fn new(mac: [u8; 6]) -> (AddressObserver, AddressWatch) {
        let published = AddressWatch::default();
        let observer = AddressObserver {
            learner: Arc::new(Mutex::new(AddressLearner::new(mac))),
            published: published.clone(),
        };
        (observer, published)
    }

    /// A frame (no virtio-net header) the guest sent.
    pub(crate) fn tx(&mut self, frame: &[u8]) {
        let mut learner = self.learner.lock().unwrap_or_else(|p| p.into_inner());
        let before = learner.generation();
        learner.observe_tx(frame);
        self.publish_if_changed(&learner, before);
    }

    /// A frame (no virtio-net header) the guest received.
    pub(crate) fn rx(&mut self, frame: &[u8]) {
        let mut learner = self.learner.lock().unwrap_or_else(|p| p.into_inner());
        let before = learner.generation();
        learner.observe_rx(frame);
        self.publish_if_changed(&learner, before);
    }

    fn publish_if_changed(&self, learner: &AddressLearner, before: u64) {
        if learner.generation() != before {
            *self.published.0.lock().unwrap_or_else(|p| p.into_inner()) = learner.addresses();
        }
    }
}
