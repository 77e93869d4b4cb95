//! Host to guest: each frame from the backend goes into the guest's rx chains behind a
//! virtio-net header. With `VIRTIO_NET_F_MRG_RXBUF` a frame spreads over as many chains as it
//! needs and the header's `num_buffers` says how many; without it, a frame takes one chain and
//! one that does not fit is dropped (the chain waits for the next frame).
//!
//! Chains are taken from the ring as a frame needs them and held until it fits, so a frame
//! never waits on a partial set of buffers being given back. A frame waiting for buffers stops
//! reading from the backend until the guest adds some.

use std::io;

use virtio_queue::{Queue, QueueT};
use virtkit_virtio::{warn_ratelimited, QueueError};
use vm_memory::GuestMemoryMmap;

use super::backend::{would_block, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use super::chain::{pop, scatter, walk, ChainError};
use super::handler::{HeldRx, NetHandler, FRAME_BUDGET};
use super::metrics::NetMetrics;

/// What became of the waiting frame.
enum Delivery {
    Delivered,
    Dropped,
    /// Not enough guest buffers yet.
    Waiting,
}

impl NetHandler {
    /// Moves frames from the backend into the guest's buffers while it has both and the budget
    /// lasts; returns whether chains were used.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        for _ in 0..FRAME_BUDGET {
            if self.rx_len == 0 && !self.read_frame_from_backend() {
                return Ok(used);
            }
            match self.deliver(queue, mem, &mut used)? {
                Delivery::Delivered => {
                    if let Some(observer) = &mut self.observer {
                        // `rx_frame` is the device's header and the frame, contiguous.
                        observer.rx(self.rx_frame.get(VNET_HDR_LEN..self.rx_len).unwrap_or_default());
                    }
                    self.rx_len = 0;
                }
                Delivery::Dropped => self.rx_len = 0,
                Delivery::Waiting => {
                    NetMetrics::add(&self.metrics.rx_starved, 1);
                    self.rx_starved = true;
                    return Ok(used);
                }
            }
        }
        self.more = true;
        Ok(used)
    }

    /// Reads one frame into `rx_frame` behind a header; `false` when none comes now.
    fn read_frame_from_backend(&mut self) -> bool {
        if self.backend_down || self.rx_starved {
            return false;
        }
        let header = self.backend.vnet_hdr_len().min(VNET_HDR_LEN);
        let offset = VNET_HDR_LEN - header;
        loop {
            match self.backend.recv(&mut self.rx_frame[offset..]) {
                Ok(n) if n <= header => {
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    warn_ratelimited!("virtio-net: the backend gave a frame of {n} bytes; dropped");
                }
                Ok(n) => {
                    // The device's own header: no offload information, a plain frame.
                    self.rx_frame[..offset].fill(0);
                    self.rx_len = offset + n;
                    return true;
                }
                Err(e) if would_block(&e) => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                    if self.backend_failed(&e) {
                        return false;
                    }
                    warn_ratelimited!("virtio-net: a frame from the backend was lost: {e}");
                }
            }
        }
    }

    /// Takes chains until the waiting frame fits, then writes it.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        used: &mut bool,
    ) -> Result<Delivery, QueueError> {
        let need = self.rx_len as u64;
        loop {
            let held: u64 = self.rx_held.iter().map(|h| h.capacity).sum();
            let enough = if self.mergeable {
                held >= need
            } else {
                !self.rx_held.is_empty()
            };
            if enough {
                break;
            }
            if self.mergeable && self.rx_held.len() >= usize::from(queue.size()) {
                // Every buffer the ring can hold at once is too little: waiting would be for ever.
                return Ok(self.drop_frame(need, held));
            }
            let Some(chain) = pop(queue, mem)? else {
                return Ok(Delivery::Waiting);
            };
            let head = chain.head_index();
            match walk(chain, mem, true, u32::MAX as usize).and_then(|(segments, capacity)| {
                if capacity < VNET_HDR_LEN as u64 {
                    return Err(ChainError::TooShort(capacity));
                }
                Ok((segments, capacity))
            }) {
                Ok((segments, capacity)) => self.rx_held.push_back(HeldRx {
                    head,
                    segments,
                    capacity,
                }),
                Err(e) => {
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    warn_ratelimited!("virtio-net: rx chain refused: {e}");
                    queue.add_used(mem, head, 0)?;
                    // Taken after the held chains: they are no longer the last taken.
                    if !self.rx_held.is_empty() {
                        self.rx_held_last = false;
                    }
                    *used = true;
                }
            }
        }
        if !self.mergeable {
            let capacity = self.rx_held.front().map_or(0, |h| h.capacity);
            if capacity < need {
                // The chain stays for the next frame.
                return Ok(self.drop_frame(need, capacity));
            }
        }
        self.write_frame(queue, mem, used)
    }

    fn drop_frame(&mut self, need: u64, room: u64) -> Delivery {
        NetMetrics::add(&self.metrics.rx_dropped, 1);
        warn_ratelimited!(
            "virtio-net: a frame of {} bytes does not fit the guest's {room}-byte buffers; dropped",
            need - VNET_HDR_LEN as u64
        );
        Delivery::Dropped
    }

    /// Writes the waiting frame over the first held chains, which hold enough, and uses them.
    fn write_frame(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        used: &mut bool,
    ) -> Result<Delivery, QueueError> {
        let need = self.rx_len as u64;
        let mut count = 0usize;
        let mut room = 0u64;
        for held in &self.rx_held {
            count += 1;
            room += held.capacity;
            if room >= need {
                break;
            }
        }
        // At most the queue size (32768) chains: `num_buffers` holds it.
        let num_buffers = count as u16;
        self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());
        let mut done = 0usize;
        let mut failed = None;
        for held in self.rx_held.drain(..count) {
            let written = if failed.is_none() {
                match scatter(mem, &held.segments, &self.rx_frame[done..self.rx_len]) {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e);
                        0
                    }
                }
            } else {
                0
            };
            done += written;
            queue.add_used(mem, held.head, written as u32)?;
        }
        *used = true;
        if self.rx_held.is_empty() {
            self.rx_held_last = true;
        }
        if let Some(e) = failed {
            // `walk` checked the buffers; memory that vanished since cuts the frame short.
            NetMetrics::add(&self.metrics.bad_chains, 1);
            NetMetrics::add(&self.metrics.rx_dropped, 1);
            warn_ratelimited!("virtio-net: rx buffer unwritable: {e}; frame cut short");
            return Ok(Delivery::Dropped);
        }
        NetMetrics::add(&self.metrics.rx_frames, 1);
        NetMetrics::add(
            &self.metrics.rx_bytes,
            (self.rx_len - VNET_HDR_LEN).min(MAX_FRAME_LEN) as u64,
        );
        Ok(Delivery::Delivered)
    }

    /// Gives back the rx chains held for a frame (before the worker stops: a snapshot must not
    /// carry chains the ring no longer offers): put back in the ring as if never taken when
    /// they were the last taken, else used empty, which drivers drop as a short frame.
    pub fn release_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        if self.rx_held.is_empty() {
            return Ok(false);
        }
        if self.rx_held_last {
            let count = self.rx_held.len() as u16;
            queue.set_next_avail(queue.next_avail().wrapping_sub(count));
            self.rx_held.clear();
            return Ok(false);
        }
        for held in self.rx_held.drain(..) {
            queue.add_used(mem, held.head, 0)?;
        }
        self.rx_held_last = true;
        Ok(true)
    }
}
