//! The fuzzing entry point for virtio-input: arbitrary bytes become the driver's side of a
//! queue in guest memory ([`queue_from_bytes`]); the device delivers waiting events into it
//! (flag bit 1 clear) or reads status events from it (set), and the configuration space is
//! read after the driver selects anything. It must never panic; `fuzz/` runs it under
//! libFuzzer and a unit test over pseudo-random inputs.

use virtkit_virtio::testing::fuzz::queue_from_bytes;
use virtkit_virtio::VirtioDevice;

use super::config::InputKind;
use super::device::Input;
use super::event::{InputEvent, BTN_LEFT, EV_ABS};
use super::handler::{consume_status, deliver_events};

pub fn fuzz_queues(data: &[u8]) {
    let Some((mem, mut queue, flags)) = queue_from_bytes(data) else {
        return;
    };
    let kind = if flags & 4 == 0 {
        InputKind::Keyboard
    } else {
        InputKind::Tablet
    };
    let Ok((mut device, handle)) = Input::new(kind) else {
        return;
    };
    // The driver's configuration reads: whatever it selects, the answer fits the space.
    for pair in data.chunks_exact(2).take(8) {
        device.write_config(0, pair);
        let mut config = [0u8; 256];
        device.read_config(0, &mut config);
        assert!(usize::from(config[2]) <= 128, "the answer's size fits its union");
    }
    handle.shared.set_ready(true);
    if flags & 2 == 0 {
        for round in 0..3u32 {
            handle.send(&[
                InputEvent::new(EV_ABS, 0, round),
                InputEvent::key(BTN_LEFT, round % 2 == 0),
                InputEvent::sync(),
            ]);
            let _ = deliver_events(&mut queue, &mem, &handle);
        }
    } else {
        let _ = consume_status(&mut queue, &mem, &handle);
        let _ = consume_status(&mut queue, &mem, &handle);
    }
}
