//! The device manager on a real machine (`/dev/kvm`, vCPUs never started): every configured
//! device attached in its slot, the slot budget as validation says it, sleep and wake.

use std::path::PathBuf;

use virtkit_hypervisor::Kvm;
use virtkit_machine::pci::DEVICE_SLOTS;
use virtkit_machine::{BootSource, Machine, MachineConfig};

use super::*;
use crate::storage::StorageDeviceConfiguration;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("virtkit-devices-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A firmware-boot configuration with `disks` 64 KiB disks and `rngs` entropy devices.
fn config(dir: &TempDir, disks: usize, rngs: usize) -> VirtualMachineConfiguration {
    // A firmware image that never runs: 64 KiB of HLT.
    let firmware = dir.0.join("fw.bin");
    std::fs::write(&firmware, vec![0xf4u8; 64 << 10]).unwrap();
    let mut config = VirtualMachineConfiguration::firmware(1, 128 << 20, firmware);
    for i in 0..disks {
        config = config.with_storage(StorageDeviceConfiguration::disk_image(
            dir.file(&format!("d{i}.img"), 64 << 10),
        ));
    }
    for _ in 0..rngs {
        config = config.with_entropy(EntropyDeviceConfiguration::default());
    }
    config
}

/// Checks that `config`'s devices validate, then attaches them to a new machine (kept alive
/// beside the manager).
fn attach_valid(config: &mut VirtualMachineConfiguration) -> (Machine, DeviceManager) {
    let mut issues = Issues(Vec::new());
    validate_devices(config, &mut issues);
    assert!(issues.0.is_empty(), "{:?}", issues.0);
    let kvm = Kvm::open().unwrap();
    let machine = machine(&kvm, config);
    let manager = DeviceManager::attach_all(&machine, config).unwrap();
    (machine, manager)
}

fn machine(kvm: &Kvm, config: &VirtualMachineConfiguration) -> Machine {
    let BootLoader::Firmware { path, .. } = &config.boot_loader else {
        unreachable!("the tests build firmware configurations")
    };
    Machine::new(
        kvm,
        MachineConfig {
            vcpus: 1,
            memory_size: config.memory_size,
            boot: BootSource::Firmware {
                path: path.clone(),
                variables: None,
            },
            serial_output: Box::new(std::io::sink()),
            serial_input: None,
            smbios_identity: None,
            shared_memory: needs_shared_memory(config),
            ps2_input: false,
        },
    )
    .unwrap()
}

fn slot_issue(config: &VirtualMachineConfiguration) -> Option<String> {
    let mut issues = Issues(Vec::new());
    validate_devices(config, &mut issues);
    issues
        .0
        .into_iter()
        .find(|i| i.message.contains("PCI slots"))
        .map(|i| i.message)
}

#[test]
fn validation_allows_exactly_the_slots_the_bus_has() {
    let dir = TempDir::new("budget");
    assert_eq!(
        DEVICE_SLOTS, 30,
        "32 slots less the host bridge and the ISA bridge"
    );
    assert_eq!(slot_issue(&config(&dir, 29, 1)), None);
    let message = slot_issue(&config(&dir, 31, 0)).expect("31 disks do not fit");
    assert!(
        message.contains(
            "31 PCI devices given (31 disks, 0 entropy devices, 0 memory balloons, 0 console devices, 0 network devices, 0 socket devices, 0 shared directories, 0 displays, 0 keyboards, 0 pointing devices)"
        ),
        "{message}"
    );
    assert!(message.contains("remove 1"), "{message}");
    assert!(
        slot_issue(&config(&dir, 30, 1)).is_some(),
        "30 disks and an entropy device"
    );
}

#[test]
fn thirty_devices_attach_in_slots_two_to_thirty_one_and_no_more_fit() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("attach");
    let mut config = config(&dir, 29, 1);
    let kvm = Kvm::open().unwrap();
    let machine = machine(&kvm, &config);
    let manager = DeviceManager::attach_all(&machine, &mut config).unwrap();
    let names = manager.names();
    assert_eq!(names.len(), 30);
    assert_eq!(names[0], ("blk0".to_owned(), 2));
    assert_eq!(names[28], ("blk28".to_owned(), 30));
    assert_eq!(names[29], ("rng0".to_owned(), 31));
    // The bus is full: one more device has no slot, and says so.
    let mut more = config;
    more.storage_devices.truncate(0);
    more.entropy_devices = vec![EntropyDeviceConfiguration::default()];
    let err = DeviceManager::attach_all(&machine, &mut more).unwrap_err();
    assert!(format!("{err:?}").contains("NoSlot"), "{err:?}");
}

#[test]
fn sleep_and_wake_reach_every_device_and_state_round_trips() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("sleep");
    let mut config = config(&dir, 2, 1);
    let kvm = Kvm::open().unwrap();
    let machine = machine(&kvm, &config);
    let manager = DeviceManager::attach_all(&machine, &mut config).unwrap();
    // No driver started them: sleep keeps them as they are, and their state is there to save.
    manager.sleep_all().unwrap();
    let saved = manager.save_devices().unwrap();
    let names: Vec<&str> = saved.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["blk0", "blk1", "rng0"]);
    let section = serde_json::to_value(&saved).unwrap();
    assert_eq!(SavedDevices::from_section(&section).unwrap(), saved);

    manager.wake_all().unwrap();
    manager.release();

    // Into new devices of the same configuration (disks of the same size: the first
    // machine's devices still hold theirs locked): other devices and another device's state
    // are refused first, changing nothing; then the state is taken, and finished once memory
    // is there.
    let other_dir = TempDir::new("sleep-restored");
    let mut same = self::config(&other_dir, 2, 1);
    let built = self::machine(&kvm, &same);
    let fresh = DeviceManager::attach_all(&built, &mut same).unwrap();
    let mut fewer = saved.clone();
    fewer.devices.pop();
    let e = fresh.restore_devices(&fewer).unwrap_err().to_string();
    assert!(
        e.contains("(blk0 in slot 2, blk1 in slot 3)")
            && e.contains("(blk0 in slot 2, blk1 in slot 3, rng0 in slot 4)"),
        "{e}"
    );
    let mut swapped = saved.clone();
    swapped.devices[0].state = saved.devices[2].state.clone();
    let e = fresh.restore_devices(&swapped).unwrap_err();
    assert!(format!("{e:?}").contains("blk0"), "{e:?}");
    fresh.restore_devices(&saved).unwrap();
    fresh.finish_restore(&built).unwrap();
    assert_eq!(fresh.save_devices().unwrap(), saved);

    let mut newer = section.clone();
    newer["version"] = serde_json::json!(DEVICES_SECTION_VERSION + 1);
    let e = SavedDevices::from_section(&newer).unwrap_err().to_string();
    assert!(e.contains("newer than version 1"), "{e}");
    let e = SavedDevices::from_section(&serde_json::json!({"version": 1})).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    assert!(SavedDevices::from_section(&serde_json::Value::Null)
        .unwrap()
        .devices
        .is_empty());
    fresh.release();
    assert!(fresh.names().is_empty());
}

#[test]
fn a_socket_network_card_attaches_as_net0_and_learns_nothing_before_the_guest_speaks() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("net-socket");
    let path = dir.0.join("n.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut config = config(&dir, 1, 0);
    config.network_devices.push(NetworkDeviceConfiguration {
        mac: Some("02:00:00:12:34:56".into()),
        attachment: NetworkAttachment::Socket {
            path: path.clone(),
            framing: net::Framing::Stream,
            listen: false,
        },
    });
    let (_machine, manager) = attach_valid(&mut config);
    let names: Vec<String> = manager.names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["blk0", "net0"]);
    listener.accept().expect("the card connected to the socket");
    let addresses = manager.network_addresses();
    assert_eq!(addresses.len(), 1);
    assert_eq!(addresses[0].mac, "02:00:00:12:34:56");
    assert_eq!((addresses[0].ipv4, addresses[0].expected_ipv4), (None, None));

    // Its state restores into a card of the same configuration on a new connection.
    manager.sleep_all().unwrap();
    let saved = manager.save_devices().unwrap();
    manager.wake_all().unwrap();
    manager.release();
    assert!(manager.network_addresses().is_empty());
    let other_dir = TempDir::new("net-socket-restored");
    let mut same = self::config(&other_dir, 1, 0);
    same.network_devices = config.network_devices.clone();
    let (built, restored) = attach_valid(&mut same);
    listener.accept().expect("the new card connected to the socket");
    restored.restore_devices(&saved).unwrap();
    restored.finish_restore(&built).unwrap();
    assert_eq!(restored.save_devices().unwrap(), saved);
    restored.release();
}

#[test]
fn a_vfkit_card_greets_its_peer_and_a_listening_card_removes_its_socket_on_release() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("net-vfkit");
    let peer_path = dir.0.join("gvproxy.sock");
    let peer = std::os::unix::net::UnixDatagram::bind(&peer_path).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let listen_path = dir.0.join("listen.sock");
    let mut config = config(&dir, 0, 0);
    for (path, framing, listen) in [
        (&peer_path, net::Framing::DatagramVfkit, false),
        (&listen_path, net::Framing::Stream, true),
    ] {
        config.network_devices.push(NetworkDeviceConfiguration {
            mac: None,
            attachment: NetworkAttachment::Socket {
                path: path.clone(),
                framing,
                listen,
            },
        });
    }
    let (_machine, manager) = attach_valid(&mut config);
    let mut first = [0u8; 16];
    let n = peer.recv(&mut first).expect("the vfkit greeting");
    assert_eq!(&first[..n], b"VFKT");
    // The listening card's socket takes a peer (the worker accepts it once the guest runs).
    assert!(std::os::unix::net::UnixStream::connect(&listen_path).is_ok());
    manager.release();
    assert!(
        !listen_path.exists(),
        "the listening socket is removed with its card"
    );
}

#[test]
fn sockets_handed_over_attach_as_stream_or_datagram_cards_and_a_file_is_refused() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let dir = TempDir::new("net-fd");
    let (stream, _stream_peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let (dgram, _dgram_peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let handed = |fd: std::os::fd::OwnedFd| NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::FileHandle {
            socket: net::SharedFd(std::sync::Arc::new(fd)),
        },
    };
    let mut config = config(&dir, 0, 0);
    config.network_devices.push(handed(stream.into()));
    config.network_devices.push(handed(dgram.into()));
    // The cards dup the descriptors: the configuration keeps its own.
    let (_machine, manager) = attach_valid(&mut config);
    let names: Vec<String> = manager.names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["net0", "net1"]);
    manager.release();

    let file = std::fs::File::open("/etc/hostname").unwrap();
    config.network_devices = vec![handed(file.into())];
    let mut issues = Issues(Vec::new());
    validate_devices(&config, &mut issues);
    assert!(
        issues
            .0
            .iter()
            .any(|i| format!("{i:?}").contains("is not a socket")),
        "{:?}",
        issues.0
    );
}

#[test]
fn a_nat_network_card_starts_passt_and_release_stops_it() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join("passt").exists())
    {
        virtkit_testkit::skip("passt is not installed (Debian package passt)");
        return;
    }
    let dir = TempDir::new("net-nat");
    let mut config = config(&dir, 0, 0);
    config.network_devices.push(NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Nat {
            published: Vec::new(),
        },
    });
    let kvm = Kvm::open().unwrap();
    let machine = machine(&kvm, &config);
    let manager = DeviceManager::attach_all(&machine, &mut config).unwrap();
    assert_eq!(manager.names()[0].0, "net0");
    let pids = manager.helper_pids();
    assert_eq!(pids.len(), 1);
    let proc_dir = PathBuf::from(format!("/proc/{}", pids[0]));
    assert!(proc_dir.exists(), "passt runs while the card is attached");
    let addresses = manager.network_addresses();
    assert_eq!(
        addresses[0].expected_ipv4,
        Some(std::net::Ipv4Addr::new(10, 0, 2, 15)),
        "NAT's address is known before the guest boots"
    );
    assert_eq!(addresses[0].mac, "02:76:6b:00:00:00");
    // As the `vmm` thread does: release (which may not signal passt), then the machine goes.
    manager.release();
    drop(machine);
    assert_eq!(
        manager.helper_pids(),
        pids,
        "release leaves passt to the manager's owner"
    );
    drop(manager);
    assert!(!proc_dir.exists(), "passt is reaped with the device manager");
}

/// Whether process `pid` is running (not a zombie), and its command line.
fn running(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status.lines().any(|l| l.starts_with("State:") && l.contains('Z')) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

#[test]
fn shared_directories_each_get_a_virtiofsd_that_goes_with_the_manager() {
    if !virtkit_testkit::skip::require_kvm() {
        return;
    }
    let virtiofsd = match virtkit_testkit::virtiofsd::virtiofsd() {
        Ok(path) => path,
        Err(reason) => return virtkit_testkit::skip::skip(&reason),
    };
    std::env::set_var(VIRTIOFSD_ENV, &virtiofsd);
    let dir = TempDir::new("shares");
    let (rw, ro) = (dir.0.join("rw"), dir.0.join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    let mut config = config(&dir, 0, 0);
    config.platform.helper_log_directory = Some(dir.0.clone());
    config.directory_sharing_devices = vec![
        DirectorySharingDeviceConfiguration {
            tag: "rw".into(),
            path: rw,
            read_only: false,
        },
        DirectorySharingDeviceConfiguration {
            tag: "ro".into(),
            path: ro,
            read_only: true,
        },
    ];
    let (machine, manager) = attach_valid(&mut config);
    let names: Vec<String> = manager.names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["fs0", "fs1"]);
    let pids = manager.helper_pids();
    assert_eq!(pids.len(), 2, "one virtiofsd per share");
    let lines: Vec<String> = pids
        .iter()
        .map(|&p| running(p).expect("virtiofsd runs"))
        .collect();
    assert!(
        lines[0].contains("--shared-dir") && !lines[0].contains("--readonly"),
        "{lines:?}"
    );
    assert!(lines[1].contains("--readonly"), "{lines:?}");
    assert!(
        dir.0.join("virtiofsd-rw.log").exists(),
        "its messages go to the helper log directory"
    );
    drop(manager);
    drop(machine);
    for pid in pids {
        assert!(
            running(pid).is_none(),
            "virtiofsd {pid} outlived its device manager"
        );
    }
}
