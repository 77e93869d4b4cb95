use std::path::PathBuf;

use super::*;

struct Home(VirtkitHome);

impl Home {
    fn new(tag: &str) -> Home {
        let root = std::env::temp_dir().join(format!("virtkit-bundle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Home(VirtkitHome::new(root))
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.0.vms_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

/// A file that passes for BIOS firmware (validation checks its size: a multiple of 4 KiB).
fn firmware(home: &Home) -> PathBuf {
    let path = home.0.root().join("bios.bin");
    std::fs::create_dir_all(home.0.root()).unwrap();
    std::fs::write(&path, vec![0u8; 128 << 10]).unwrap();
    path
}

fn spec(firmware: PathBuf) -> NewBundle {
    NewBundle {
        cpu_count: 1,
        memory_size: 128 << 20,
        boot: NewBoot::Firmware { path: firmware },
        restore_image: None,
        disk_size: Some(64 << 20),
        keep_restore_image: false,
        ports: Vec::new(),
        network_devices: Vec::new(),
        shares: Vec::new(),
        seed: None,
    }
}

fn nothing(_: u64, _: u64) {}

#[test]
fn create_writes_every_file_and_open_reads_it_back() {
    let home = Home::new("create");
    let b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    for f in [
        CONFIG_FILE,
        DISK_FILE,
        AUX_FILE,
        HARDWARE_MODEL_FILE,
        MACHINE_ID_FILE,
    ] {
        assert!(b.file(f).is_file(), "{f} missing");
    }
    assert_eq!(b.disk_size().unwrap(), 64 << 20);
    assert!(
        b.disk_usage() < 1 << 20,
        "the empty disk is sparse: {}",
        b.disk_usage()
    );
    let stored = b.configuration();
    assert_eq!(stored.storage_devices[0].path, PathBuf::from(DISK_FILE));
    let run = b.runtime_configuration().unwrap();
    assert_eq!(run.storage_devices[0].path, b.file(DISK_FILE));
    assert_eq!(run.platform.machine_identifier, Some(b.machine_identifier()));
    // Every bundle VM has a socket device on `vsock.sock` in its bundle, the guest CID 3; the
    // stored configuration does not name it.
    assert!(stored.socket_devices.is_empty());
    assert_eq!(run.socket_devices.len(), 1);
    assert_eq!(run.socket_devices[0].uds_path, b.file(VSOCK_SOCKET));
    assert_eq!(run.socket_devices[0].guest_cid, 3);

    let again = Bundle::open(&home.0, "web").unwrap();
    assert_eq!(again.machine_identifier(), b.machine_identifier());
    assert_eq!(again.configuration().to_json(), b.configuration().to_json());
    assert_eq!(again.hardware_model(), b.hardware_model());
    assert_eq!(home.leftovers(), vec!["web".to_owned()]);
}

#[test]
fn a_name_clash_and_a_bad_name_are_refused_and_change_nothing() {
    let home = Home::new("clash");
    let fw = firmware(&home);
    let first = Bundle::create(&home.0, "web", &spec(fw.clone()), &mut nothing).unwrap();
    let e = Bundle::create(&home.0, "web", &spec(fw.clone()), &mut nothing).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(
        Bundle::open(&home.0, "web").unwrap().machine_identifier(),
        first.machine_identifier()
    );
    let e = Bundle::create(&home.0, "../evil", &spec(fw), &mut nothing).unwrap_err();
    assert!(e.to_string().contains("not a valid VM name"), "{e}");
    assert_eq!(home.leftovers(), vec!["web".to_owned()]);
}

#[test]
fn an_invalid_machine_is_refused_before_anything_is_left() {
    let home = Home::new("invalid");
    let mut s = spec(firmware(&home));
    s.memory_size = 1 << 20;
    let e = Bundle::create(&home.0, "tiny", &s, &mut nothing).unwrap_err();
    assert!(matches!(e, BundleError::Invalid(_)), "{e}");
    assert!(home.leftovers().is_empty(), "{:?}", home.leftovers());
}

#[test]
fn unknown_and_damaged_bundles_get_clear_errors() {
    let home = Home::new("damaged");
    let e = Bundle::open(&home.0, "ghost").unwrap_err();
    assert!(e.to_string().contains("no VM named `ghost`"), "{e}");

    let b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    std::fs::write(b.file(MACHINE_ID_FILE), "not-an-id\n").unwrap();
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("damaged: machine-id"), "{e}");

    let config = std::fs::read_to_string(b.file(CONFIG_FILE)).unwrap();
    std::fs::write(b.file(CONFIG_FILE), &config[..config.len() / 2]).unwrap();
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("damaged: config.json is not JSON"), "{e}");

    std::fs::write(
        b.file(CONFIG_FILE),
        config.replace("\"version\": 1", "\"version\": 7, \"gpu\": 1"),
    )
    .unwrap();
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("newer virtkit (bundle format 7)"), "{e}");

    std::fs::remove_file(b.file(CONFIG_FILE)).unwrap();
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("config.json is missing"), "{e}");

    let listed = Bundle::list(&home.0).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].1.is_err());
}

#[test]
fn the_lock_refuses_a_second_holder_and_delete_of_a_running_vm() {
    let home = Home::new("lock");
    let b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    assert!(!b.is_running());
    let lock = b.lock().unwrap();
    b.write_pid(&lock).unwrap();
    assert!(b.is_running());
    assert_eq!(b.running_pid(), Some(std::process::id()));
    let e = b.lock().unwrap_err();
    assert!(e.to_string().contains("is running (process"), "{e}");
    let e = Bundle::open(&home.0, "web").unwrap().delete().unwrap_err();
    assert!(matches!(e, BundleError::Running { .. }), "{e}");
    assert!(!e.to_string().contains("`virtkit"), "names no command: {e}");
    drop(lock);
    assert!(!b.is_running());
    b.delete().unwrap();
    assert!(home.leftovers().is_empty(), "{:?}", home.leftovers());
}

#[test]
fn leftovers_of_killed_creates_are_swept_and_never_listed() {
    let home = Home::new("sweep");
    let fw = firmware(&home);
    Bundle::create(&home.0, "web", &spec(fw), &mut nothing).unwrap();
    // PID 0x7fff_fff0 does not exist; a leftover of a live process is kept.
    let dead = home.0.vms_dir().join(".half.creating-2147483632");
    let live = home
        .0
        .vms_dir()
        .join(format!(".busy.creating-{}", std::process::id()));
    std::fs::create_dir_all(dead.join("x")).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let listed: Vec<String> = Bundle::list(&home.0)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed, vec!["web".to_owned()]);
    assert!(!dead.exists());
    assert!(live.exists());
}

#[test]
fn clone_copies_the_disk_with_a_new_identity() {
    let home = Home::new("clone");
    let src = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    let data = b"written by the first VM";
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.file(DISK_FILE))
            .unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(data).unwrap();
    }
    let (copy, _method) = src.clone_to(&home.0, "web-2", &mut nothing).unwrap();
    assert_ne!(copy.machine_identifier(), src.machine_identifier());
    assert_ne!(
        copy.machine_identifier().mac_address(0),
        src.machine_identifier().mac_address(0)
    );
    assert_eq!(
        std::fs::read(copy.file(DISK_FILE)).unwrap(),
        std::fs::read(src.file(DISK_FILE)).unwrap()
    );
    assert_eq!(copy.configuration().to_json(), src.configuration().to_json());
    let e = src.clone_to(&home.0, "web-2", &mut nothing).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let _running = src.lock().unwrap();
    let e = src.clone_to(&home.0, "web-3", &mut nothing).unwrap_err();
    assert!(e.to_string().contains("is running"), "{e}");
    let mut names = home.leftovers();
    names.sort();
    assert_eq!(names, vec!["web".to_owned(), "web-2".to_owned()]);
}

#[test]
fn the_disk_grows_but_never_shrinks_and_config_changes_are_checked() {
    let home = Home::new("set");
    let mut b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    b.grow_disk(128 << 20).unwrap();
    assert_eq!(b.disk_size().unwrap(), 128 << 20);
    let e = b.grow_disk(64 << 20).unwrap_err();
    assert!(e.to_string().contains("can grow but not shrink"), "{e}");
    assert_eq!(b.disk_size().unwrap(), 128 << 20);

    let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json()).unwrap();
    c.cpu_count = 0;
    assert!(b.set_configuration(c).is_err());
    assert_eq!(Bundle::open(&home.0, "web").unwrap().configuration().cpu_count, 1);
    let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json()).unwrap();
    c.cpu_count = 2;
    b.set_configuration(c).unwrap();
    assert_eq!(Bundle::open(&home.0, "web").unwrap().configuration().cpu_count, 2);
}

#[test]
fn a_restore_image_is_installed_and_kept_when_asked() {
    let home = Home::new("keep");
    let image = home.0.root().join("image.raw");
    std::fs::create_dir_all(home.0.root()).unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..4].copy_from_slice(b"boot");
    bytes[700_000..700_004].copy_from_slice(b"data");
    std::fs::write(&image, &bytes).unwrap();
    let mut s = spec(firmware(&home));
    s.restore_image = Some(image.clone());
    s.disk_size = Some(4 << 20);
    s.keep_restore_image = true;
    let mut calls = 0;
    let b = Bundle::create(&home.0, "kept", &s, &mut |_, _| calls += 1).unwrap();
    assert!(calls > 0, "progress was reported");
    let disk = std::fs::read(b.file(DISK_FILE)).unwrap();
    assert_eq!(disk.len(), 4 << 20);
    assert_eq!(&disk[..1 << 20], &bytes[..]);
    assert!(disk[1 << 20..].iter().all(|&b| b == 0));
    assert_eq!(std::fs::read(b.file("restore-image.raw")).unwrap(), bytes);

    s.disk_size = Some(512 << 10);
    let e = Bundle::create(&home.0, "small", &s, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("cannot make the disk from"), "{e}");
    assert!(!home.0.vms_dir().join("small").exists());
}

/// Writes `data` at `offset` of the VM's boot disk as the guest would (through the disk backend
/// its configuration names), and reads `len` bytes back from `offset`.
mod disk_io {
    use super::*;
    use virtkit::DiskImageFormat;
    use virtkit_devices::block::qcow2::Qcow2Disk;
    use virtkit_devices::block::{CacheMode, DiskBackend, SyncMode};

    fn with_disk<T>(b: &Bundle, f: impl FnOnce(&mut dyn DiskBackend) -> T) -> T {
        let path = b.file(DISK_FILE);
        match b.disk_format() {
            DiskImageFormat::Raw => {
                let mut disk =
                    virtkit_devices::block::FileDisk::open(&path, false, CacheMode::Cached, SyncMode::Full)
                        .unwrap();
                f(&mut disk)
            }
            DiskImageFormat::Qcow2 => {
                let mut disk = Qcow2Disk::open(&path, false, CacheMode::Cached, SyncMode::Full).unwrap();
                let out = f(&mut disk);
                disk.write_back().unwrap();
                out
            }
        }
    }

    pub fn write(b: &Bundle, offset: u64, data: &[u8]) {
        with_disk(b, |d| {
            d.write_at(offset, data).unwrap();
            d.flush().unwrap();
        })
    }

    pub fn read(b: &Bundle, offset: u64, len: usize) -> Vec<u8> {
        with_disk(b, |d| {
            let mut buf = vec![0u8; len];
            d.read_at(offset, &mut buf).unwrap();
            buf
        })
    }
}

#[test]
fn snapshots_restore_old_data_and_deleting_the_middle_one_keeps_the_others() {
    let home = Home::new("snap");
    let mut b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    disk_io::write(&b, 0, b"first...");
    b.snapshot_create("one").unwrap();
    // The raw disk became layered: qcow2 over the frozen raw file.
    assert_eq!(b.disk_format(), virtkit::DiskImageFormat::Qcow2);
    assert_eq!(b.disk_size().unwrap(), 64 << 20);
    disk_io::write(&b, 0, b"second..");
    b.snapshot_create("two").unwrap();
    disk_io::write(&b, 0, b"third...");
    b.snapshot_create("three").unwrap();
    disk_io::write(&b, 0, b"current.");
    let names: Vec<_> = b.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["one", "two", "three"]);

    b.snapshot_restore("one").unwrap();
    assert_eq!(disk_io::read(&b, 0, 8), b"first...");
    b.snapshot_delete("two").unwrap();
    b.snapshot_restore("three").unwrap();
    assert_eq!(
        disk_io::read(&b, 0, 8),
        b"third...",
        "the deleted middle snapshot's layer stays while three needs it"
    );
    b.snapshot_restore("one").unwrap();
    assert_eq!(disk_io::read(&b, 0, 8), b"first...");
    // The chain is what the VM process would check before running.
    b.runtime_configuration().unwrap();
    // Reopened from disk, the bundle says the same.
    let b = Bundle::open(&home.0, "web").unwrap();
    assert_eq!(b.snapshots().unwrap().len(), 2);
    assert_eq!(disk_io::read(&b, 0, 8), b"first...");

    // Errors are one sentence each and change nothing.
    let mut b = b;
    let err = b.snapshot_create("one").unwrap_err().to_string();
    assert!(err.contains("already has a snapshot named `one`"), "{err}");
    let err = b.snapshot_restore("two").unwrap_err().to_string();
    assert!(err.contains("no snapshot named `two`"), "{err}");
    let err = b.snapshot_create("../x").unwrap_err().to_string();
    assert!(err.contains("not a snapshot name"), "{err}");
    assert_eq!(b.snapshots().unwrap().len(), 2);
}

#[test]
fn a_layered_vm_clones_with_hard_links_and_the_clones_writes_stay_its_own() {
    let home = Home::new("layered-clone");
    let mut b = Bundle::create(&home.0, "src", &spec(firmware(&home)), &mut nothing).unwrap();
    disk_io::write(&b, 4096, b"base data");
    b.snapshot_create("s").unwrap();
    let (copy, method) = b.clone_to(&home.0, "copy", &mut nothing).unwrap();
    assert_eq!(method, CloneMethod::Layered);
    assert_eq!(disk_io::read(&copy, 4096, 9), b"base data");
    disk_io::write(&copy, 4096, b"copy data");
    assert_eq!(
        disk_io::read(&b, 4096, 9),
        b"base data",
        "the clone's writes reach the source"
    );
    disk_io::write(&b, 0, b"source");
    assert_eq!(
        disk_io::read(&copy, 0, 6),
        [0u8; 6],
        "the source's writes reach the clone"
    );
    // Frozen layers are shared, not copied: same inodes.
    use std::os::unix::fs::MetadataExt;
    let layers: Vec<_> = std::fs::read_dir(copy.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
        .collect();
    assert!(!layers.is_empty());
    for l in &layers {
        let here = l.metadata().unwrap();
        let there = std::fs::metadata(b.file(&l.file_name().to_string_lossy())).unwrap();
        assert_eq!(here.ino(), there.ino(), "{:?}", l.file_name());
    }
    // Deleting the source leaves the clone whole.
    std::fs::remove_dir_all(b.path()).unwrap();
    let copy = Bundle::open(&home.0, "copy").unwrap();
    copy.runtime_configuration().unwrap();
    assert_eq!(disk_io::read(&copy, 4096, 9), b"copy data");
}

#[test]
fn a_layer_chain_reaching_outside_the_bundle_is_refused() {
    let home = Home::new("layer-escape");
    let mut b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    b.snapshot_create("s").unwrap();
    // A hand-made disk.img reading through to a host file.
    let disk = b.file(DISK_FILE);
    std::fs::remove_file(&disk).unwrap();
    let secret = home.0.root().join("secret.img");
    std::fs::write(&secret, vec![7u8; 1 << 20]).unwrap();
    virtkit_disk::create_qcow2_layer(
        &disk,
        1 << 20,
        Some((secret.to_str().unwrap(), virtkit_disk::ImageFormat::Raw)),
    )
    .unwrap();
    let err = b.runtime_configuration().unwrap_err().to_string();
    assert!(err.contains("not one of the bundle's layers"), "{err}");
}

#[test]
fn an_untouched_active_layer_is_not_frozen_again_so_chains_do_not_grow_per_clone() {
    let home = Home::new("chain-growth");
    let mut b = Bundle::create(&home.0, "src", &spec(firmware(&home)), &mut nothing).unwrap();
    b.use_layered_disk().unwrap();
    let depth = |b: &Bundle| layers::chain(b.path(), b.name(), b.disk_format()).unwrap().len();
    assert_eq!(depth(&b), 1);
    for i in 0..5 {
        b.clone_to(&home.0, &format!("copy-{i}"), &mut nothing).unwrap();
        b.snapshot_create(&format!("s{i}")).unwrap();
    }
    assert_eq!(depth(&b), 1, "nothing was written, so nothing new was frozen");
    disk_io::write(&b, 0, b"x");
    b.snapshot_create("written").unwrap();
    assert_eq!(depth(&b), 2);
    let copy = Bundle::open(&home.0, "copy-4").unwrap();
    assert_eq!(depth(&copy), 1);
}

#[test]
fn a_suspended_vms_snapshot_keeps_its_saved_state_and_restore_brings_the_pair_back() {
    let home = Home::new("snap-state");
    let mut b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    disk_io::write(&b, 0, b"at-suspend");
    std::fs::write(b.file(STATE_FILE), b"saved machine state").unwrap();
    let s = b.snapshot_create("paused-here").unwrap();
    assert!(s.state.is_some());
    // Resumed and changed since: the state file went away, the disk moved on.
    std::fs::remove_file(b.file(STATE_FILE)).unwrap();
    disk_io::write(&b, 0, b"later.....");
    b.snapshot_create("stopped-later").unwrap();
    b.snapshot_restore("paused-here").unwrap();
    assert_eq!(disk_io::read(&b, 0, 10), b"at-suspend");
    assert_eq!(std::fs::read(b.file(STATE_FILE)).unwrap(), b"saved machine state");
    // A snapshot without a state drops the one of the disk being discarded.
    b.snapshot_restore("stopped-later").unwrap();
    assert!(!b.file(STATE_FILE).exists());
    assert_eq!(disk_io::read(&b, 0, 10), b"later.....");
    b.snapshot_delete("paused-here").unwrap();
    assert!(!b.file("snapshot-paused-here.vksave").exists());
}

#[test]
fn a_running_vms_snapshot_that_cannot_reopen_its_disk_leaves_everything_as_it_was() {
    let home = Home::new("snap-live-fail");
    let mut b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    disk_io::write(&b, 0, b"before");
    let config_before = std::fs::read(b.file(CONFIG_FILE)).unwrap();
    let reopened = std::cell::RefCell::new(Vec::new());
    let err = b
        .snapshot_create_in_vm_process(
            "live",
            |path| std::fs::write(path, b"state").map_err(|e| e.to_string()),
            |disk| {
                reopened.borrow_mut().push(disk.clone());
                if disk.format == virtkit::DiskImageFormat::Qcow2 {
                    Err("no descriptors left".to_owned())
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
    assert!(err.contains("no descriptors left"), "{err}");
    // Tried the new layer, then the old raw file again, both as the VM process sees them.
    let reopened = reopened.into_inner();
    assert_eq!(reopened.len(), 2, "{reopened:?}");
    assert_eq!(reopened[1].format, virtkit::DiskImageFormat::Raw);
    assert_eq!(reopened[1].path, b.file(DISK_FILE));
    assert_eq!(std::fs::read(b.file(CONFIG_FILE)).unwrap(), config_before);
    assert_eq!(b.disk_format(), virtkit::DiskImageFormat::Raw);
    assert_eq!(disk_io::read(&b, 0, 6), b"before");
    assert!(b.snapshots().unwrap().is_empty());
    assert!(!b.file("snapshot-live.vksave").exists());
    let layers: Vec<_> = std::fs::read_dir(&b.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
        .collect();
    assert!(layers.is_empty(), "a layer was left behind");

    // And when it can: recorded with its state, the disk layered.
    let s = b
        .snapshot_create_in_vm_process(
            "live",
            |path| std::fs::write(path, b"state").map_err(|e| e.to_string()),
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!(s.state.as_deref(), Some("snapshot-live.vksave"));
    assert_eq!(b.disk_format(), virtkit::DiskImageFormat::Qcow2);
    assert_eq!(disk_io::read(&b, 0, 6), b"before");
}

#[test]
fn a_freeze_of_a_raw_disk_cut_short_after_the_configuration_changed_still_reads_it_as_raw() {
    let home = Home::new("snap-cut");
    let b = Bundle::create(&home.0, "web", &spec(firmware(&home)), &mut nothing).unwrap();
    disk_io::write(&b, 0, b"raw data");
    // The state a crash leaves between the configuration's switch and the new disk.img: the
    // raw file has its layer name too, and the configuration says qcow2.
    std::fs::hard_link(b.file(DISK_FILE), b.file("layer-0123456789abcdef.img")).unwrap();
    let text = std::fs::read_to_string(b.file(CONFIG_FILE)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["storage_devices"][0]["format"] = "qcow2".into();
    std::fs::write(b.file(CONFIG_FILE), config.to_string()).unwrap();

    let b = Bundle::open(&home.0, "web").unwrap();
    assert_eq!(b.disk_format(), virtkit::DiskImageFormat::Raw);
    assert_eq!(disk_io::read(&b, 0, 8), b"raw data");
}
