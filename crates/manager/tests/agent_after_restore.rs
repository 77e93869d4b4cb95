//! After a VM is restored from a suspend its guest agent says no new hello (it said it when the
//! guest booted, to another process): the VM process asks whether an agent answers and has it
//! set the guest's clock. Here the agent runs on the host behind a fake hybrid-vsock socket, as
//! in the agent's own tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use virtkit_manager::agent::AgentHost;
use virtkit_testkit::agent::{static_agent, AgentProcess, FakeVsock};

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("virtkit-agent-restore-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_restored_vms_agent_is_found_without_a_hello_and_its_status_is_known_again() {
    let dir = scratch("agent");
    let _agent = AgentProcess::start(&static_agent(), &dir.join("agent.sock"), "none");
    let _vsock = FakeVsock::serve(
        &dir.join("vsock.sock"),
        HashMap::from([(1024, dir.join("agent.sock"))]),
    );
    let host = AgentHost::start(&dir, Vec::new()).unwrap();
    assert!(host.status().is_none(), "no hello came");
    host.set_time_after_restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.status().is_none() {
        assert!(
            Instant::now() < deadline,
            "the agent was not asked after the restore"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!host.status().unwrap().version.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_agent_a_restore_gives_up_quietly() {
    let dir = scratch("none");
    let _vsock = FakeVsock::serve(&dir.join("vsock.sock"), HashMap::new());
    let host = AgentHost::start(&dir, Vec::new()).unwrap();
    host.set_time_after_restore();
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.status().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
