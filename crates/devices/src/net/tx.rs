//! Guest to host: each tx chain is a virtio-net header and a frame. The frame is copied out of
//! guest memory once (without the header when the backend takes plain frames) and handed to
//! the backend; a chain whose frame the backend cannot take now stays pending, and the ring is
//! not popped again until it goes (frames keep their order).

use std::io::{self, IoSlice};

use virtio_queue::{Queue, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::GuestMemoryMmap;

use super::backend::{would_block, MAX_FRAME_LEN, VNET_HDR_LEN};
use super::chain::{gather, pop, walk, ChainError};
use super::handler::{NetHandler, PendingTx, FRAME_BUDGET};
use super::metrics::NetMetrics;

impl NetHandler {
    /// Sends the guest's frames until the ring is empty, the backend would block or the budget
    /// ran out; returns whether chains were used. What the backend gathered of them (a stream's
    /// batch) is written out before returning.
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.tx_blocked = false;
        if !self.flush_backend() {
            return Ok(false);
        }
        let mut used = false;
        let result = self.send_frames(queue, mem, &mut used);
        if !self.tx_blocked {
            self.flush_backend();
        }
        result.map(|()| used)
    }

    /// Has the backend write out what it holds; `false` if it would block (`tx_blocked` set).
    fn flush_backend(&mut self) -> bool {
        if self.backend_down {
            return true;
        }
        match self.backend.flush() {
            Ok(()) => true,
            Err(e) if would_block(&e) => {
                self.tx_blocked = true;
                false
            }
            Err(e) => {
                warn_ratelimited!("virtio-net: a frame could not be finished: {e}");
                NetMetrics::add(&self.metrics.tx_dropped, 1);
                self.backend_failed(&e);
                true
            }
        }
    }

    /// The pass's frames, from the ring to the backend.
    fn send_frames(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        used: &mut bool,
    ) -> Result<(), QueueError> {
        for _ in 0..FRAME_BUDGET {
            if self.tx.is_none() && !self.take_chain(queue, mem, used)? {
                return Ok(());
            }
            if !self.tx_ready && !self.read_frame(mem) {
                self.complete_tx(queue, mem, used)?;
                continue;
            }
            if !self.backend_down {
                match self.backend.send(&[IoSlice::new(&self.tx_frame)]) {
                    Ok(()) => {
                        if let Some(observer) = &mut self.observer {
                            let header = self.backend.vnet_hdr_len().min(self.tx_frame.len());
                            observer.tx(&self.tx_frame[header..]);
                        }
                        NetMetrics::add(&self.metrics.tx_frames, 1);
                        NetMetrics::add(&self.metrics.tx_bytes, self.frame_bytes());
                    }
                    Err(e) if would_block(&e) => {
                        NetMetrics::add(&self.metrics.tx_blocked, 1);
                        self.tx_blocked = true;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn_ratelimited!("virtio-net: the backend refused a frame: {e}");
                        NetMetrics::add(&self.metrics.tx_dropped, 1);
                        self.backend_failed(&e);
                    }
                }
            } else {
                // The cable is out: the frame goes nowhere, and the guest must not stall on it.
                NetMetrics::add(&self.metrics.tx_dropped, 1);
            }
            self.complete_tx(queue, mem, used)?;
        }
        self.more = true;
        Ok(())
    }

    /// Pops the next chain as the pending frame; `false` when the ring is empty. Refused chains
    /// are returned at once.
    fn take_chain(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        used: &mut bool,
    ) -> Result<bool, QueueError> {
        loop {
            let Some(chain) = pop(queue, mem)? else {
                return Ok(false);
            };
            let head = chain.head_index();
            let checked =
                walk(chain, mem, false, VNET_HDR_LEN + MAX_FRAME_LEN).and_then(|(segments, total)| {
                    if total < VNET_HDR_LEN as u64 {
                        return Err(ChainError::TooShort(total));
                    }
                    Ok(segments)
                });
            match checked {
                Ok(segments) => {
                    self.tx = Some(PendingTx { head, segments });
                    self.tx_ready = false;
                    return Ok(true);
                }
                Err(e) => {
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-net: tx chain refused: {e}");
                    queue.add_used(mem, head, 0)?;
                    *used = true;
                }
            }
        }
    }

    /// Copies the pending chain's frame (and the header if the backend takes it) out of guest
    /// memory; `false` if it cannot be read (counted, the chain is to be returned).
    fn read_frame(&mut self, mem: &GuestMemoryMmap) -> bool {
        let Some(tx) = &self.tx else { return false };
        let skip = VNET_HDR_LEN - self.backend.vnet_hdr_len().min(VNET_HDR_LEN);
        let total: u64 = tx.segments.iter().map(|s| u64::from(s.len)).sum();
        // `walk` bounded the total; a restored state is checked again here.
        let len = total
            .saturating_sub(skip as u64)
            .min((VNET_HDR_LEN + MAX_FRAME_LEN) as u64) as usize;
        self.tx_frame.resize(len, 0);
        match gather(mem, &tx.segments, skip as u64, &mut self.tx_frame) {
            Ok(n) if n == len => {
                self.tx_ready = true;
                true
            }
            result => {
                let e = result.err().unwrap_or(ChainError::Truncated);
                NetMetrics::add(&self.metrics.bad_chains, 1);
                warn_ratelimited!("virtio-net: tx frame unreadable: {e}");
                false
            }
        }
    }

    /// Bytes of the pending frame without the header.
    fn frame_bytes(&self) -> u64 {
        let header = self.backend.vnet_hdr_len().min(self.tx_frame.len());
        (self.tx_frame.len() - header) as u64
    }

    fn complete_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        used: &mut bool,
    ) -> Result<(), QueueError> {
        self.tx_ready = false;
        if let Some(tx) = self.tx.take() {
            queue.add_used(mem, tx.head, 0)?;
            *used = true;
        }
        Ok(())
    }
}
