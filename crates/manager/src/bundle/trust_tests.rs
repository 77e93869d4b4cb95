//! A bundle trusted only as far as it should be: links, special files, out-of-bundle paths,
//! permissions, shared identities and names, and `change` being all or nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

struct Home(VirtkitHome);

impl Home {
    fn new(tag: &str) -> Home {
        let root = std::env::temp_dir().join(format!("virtkit-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Home(VirtkitHome::new(root))
    }

    fn scratch(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.root().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn vm(&self, name: &str) -> Bundle {
        let fw = self.scratch("bios.bin", &vec![0u8; 128 << 10]);
        let spec = NewBundle {
            cpu_count: 1,
            memory_size: 128 << 20,
            boot: NewBoot::Firmware { path: fw },
            restore_image: None,
            disk_size: Some(64 << 20),
            keep_restore_image: false,
            ports: Vec::new(),
            network_devices: Vec::new(),
            shares: Vec::new(),
            seed: None,
        };
        Bundle::create(&self.0, name, &spec, &mut |_, _| {}).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
}

/// Runs `f` on a thread and fails (instead of hanging) if it blocks.
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("blocked on a bundle file")
}

#[test]
fn a_symlinked_log_is_refused_and_its_target_untouched() {
    let home = Home::new("log-link");
    let b = home.vm("web");
    let victim = home.scratch("victim.txt", b"precious");
    std::os::unix::fs::symlink(&victim, b.file(CONSOLE_LOG_FILE)).unwrap();
    let e = b.open_file(CONSOLE_LOG_FILE, Access::Replace).unwrap_err();
    assert!(
        e.to_string()
            .contains("damaged: console.log is a symbolic link; bundle files must be regular files"),
        "{e}"
    );
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("console.log is a symbolic link"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    std::fs::remove_file(b.file(CONSOLE_LOG_FILE)).unwrap();
    std::fs::hard_link(&victim, b.file(CONSOLE_LOG_FILE)).unwrap();
    let e = b.open_file(CONSOLE_LOG_FILE, Access::Replace).unwrap_err();
    assert!(e.to_string().contains("hard links"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn metadata_that_is_a_device_a_fifo_a_link_or_huge_is_refused_at_once() {
    let home = Home::new("meta");
    let b = home.vm("web");
    let config = b.file(CONFIG_FILE);
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let h = home.0.root().to_owned();
    let e = promptly(move || Bundle::open(&VirtkitHome::new(h), "web").unwrap_err());
    assert!(e.to_string().contains("config.json is a symbolic link"), "{e}");

    std::fs::remove_file(&config).unwrap();
    mkfifo(&config);
    let h = home.0.root().to_owned();
    let e = promptly(move || Bundle::open(&VirtkitHome::new(h), "web").unwrap_err());
    assert!(e.to_string().contains("config.json is a FIFO"), "{e}");
    let listed = promptly({
        let h = home.0.root().to_owned();
        move || Bundle::list(&VirtkitHome::new(h)).unwrap().len()
    });
    assert_eq!(listed, 1);

    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, vec![b' '; (MAX_METADATA_SIZE + 1) as usize]).unwrap();
    let e = Bundle::open(&home.0, "web").unwrap_err();
    assert!(e.to_string().contains("config.json is larger than 1 MiB"), "{e}");
}

#[test]
fn a_linked_disk_is_never_grown() {
    let home = Home::new("disk-link");
    let mut b = home.vm("web");
    let other = home.scratch("other.img", &[1u8; 4096]);
    std::fs::remove_file(b.file(DISK_FILE)).unwrap();
    std::os::unix::fs::symlink(&other, b.file(DISK_FILE)).unwrap();
    let e = b.grow_disk(1 << 30).unwrap_err();
    assert!(e.to_string().contains("disk.img is a symbolic link"), "{e}");
    std::fs::remove_file(b.file(DISK_FILE)).unwrap();
    std::fs::hard_link(&other, b.file(DISK_FILE)).unwrap();
    let e = b.grow_disk(1 << 30).unwrap_err();
    assert!(e.to_string().contains("disk.img has 2 hard links"), "{e}");
    assert_eq!(std::fs::metadata(&other).unwrap().len(), 4096);
}

#[test]
fn an_unrecorded_path_outside_the_bundle_is_refused_until_recorded() {
    let home = Home::new("external");
    let b = home.vm("web");
    assert_eq!(b.external_paths(), [home.0.root().join("bios.bin")]);
    let outside = home.scratch("data.img", &[0u8; 1 << 20]);
    let text = std::fs::read_to_string(b.file(CONFIG_FILE)).unwrap();
    let edited = text.replace(
        "\"path\": \"disk.img\"",
        &format!("\"path\": \"{}\"", outside.display()),
    );
    assert_ne!(edited, text);
    std::fs::write(b.file(CONFIG_FILE), &edited).unwrap();
    let mut b = Bundle::open(&home.0, "web").unwrap();
    let e = b.runtime_configuration().unwrap_err();
    assert!(matches!(e, BundleError::Unrecorded { .. }), "{e}");
    assert!(
        e.to_string().contains("data.img (storage_devices[0].path)"),
        "{e}"
    );
    for escape in ["../web2/disk.img", "sub/disk.img"] {
        std::fs::write(b.file(CONFIG_FILE), text.replace("disk.img", escape)).unwrap();
        let again = Bundle::open(&home.0, "web").unwrap();
        assert!(again.runtime_configuration().is_err(), "{escape}");
    }
    std::fs::write(
        b.file(CONFIG_FILE),
        text.replace("\"disk.img\"", "\"machine-id\""),
    )
    .unwrap();
    let e = Bundle::open(&home.0, "web")
        .unwrap()
        .runtime_configuration()
        .unwrap_err();
    assert!(e.to_string().contains("names the bundle's own machine-id"), "{e}");

    std::fs::write(b.file(CONFIG_FILE), &edited).unwrap();
    b.change(Change {
        record: vec![outside.clone()],
        ..Change::default()
    })
    .unwrap();
    let b = Bundle::open(&home.0, "web").unwrap();
    assert!(b.external_paths().contains(&outside));
    assert!(b.runtime_configuration().is_ok());
}

#[test]
fn bundles_are_owner_only() {
    let home = Home::new("modes");
    let b = home.vm("web");
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(b.path()), 0o700);
    for entry in std::fs::read_dir(b.path()).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let lock = b.lock().unwrap();
    assert_eq!(mode(&b.file(LOCK_FILE)), 0o600);
    drop(lock);
    // A lock file left world-readable by an older virtkit is made owner-only.
    std::fs::set_permissions(b.file(LOCK_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(b.lock().unwrap());
    assert_eq!(mode(&b.file(LOCK_FILE)), 0o600);
    let log = b.open_file(CONSOLE_LOG_FILE, Access::Replace).unwrap();
    drop(log);
    assert_eq!(mode(&b.file(CONSOLE_LOG_FILE)), 0o600);
}

#[test]
fn names_differing_only_in_case_clash() {
    let home = Home::new("case");
    let b = home.vm("web");
    let fw = home.0.root().join("bios.bin");
    let spec = NewBundle {
        cpu_count: 1,
        memory_size: 128 << 20,
        boot: NewBoot::Firmware { path: fw },
        restore_image: None,
        disk_size: Some(1 << 20),
        keep_restore_image: false,
        ports: Vec::new(),
        network_devices: Vec::new(),
        shares: Vec::new(),
        seed: None,
    };
    let e = Bundle::create(&home.0, "Web", &spec, &mut |_, _| {}).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a VM named `web` already exists (names differ only in case)"
    );
    let e = b.clone_to(&home.0, "WEB", &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, BundleError::CaseClash { .. }), "{e}");
    let mut zero = spec;
    zero.disk_size = Some(0);
    let e = Bundle::create(&home.0, "zero", &zero, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("a disk of 0 bytes"), "{e}");
}

#[test]
fn a_copy_by_hand_does_not_run_beside_its_original_until_it_has_a_new_identity() {
    let home = Home::new("twin");
    let a = home.vm("a");
    let copy = home.0.vms_dir().join("b");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(a.path()).unwrap() {
        let e = entry.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let mut b = Bundle::open(&home.0, "b").unwrap();
    assert_eq!(b.machine_identifier(), a.machine_identifier());
    assert!(b.runtime_configuration().is_ok(), "fine while `a` is stopped");
    let running = a.lock().unwrap();
    let e = b.runtime_configuration().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the VM `b` has the same machine identifier as `a`, which is running (a bundle copied by hand \
         keeps its identity, and two running machines must not share one)"
    );
    b.change(Change {
        new_identity: true,
        ..Change::default()
    })
    .unwrap();
    assert_ne!(b.machine_identifier(), a.machine_identifier());
    assert_eq!(
        Bundle::open(&home.0, "b").unwrap().machine_identifier(),
        b.machine_identifier()
    );
    assert!(b.runtime_configuration().is_ok());
    drop(running);
}

#[test]
fn a_change_is_all_or_nothing() {
    let home = Home::new("change");
    let mut b = home.vm("web");
    let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json()).unwrap();
    c.cpu_count = 2;
    let e = b
        .change(Change {
            config: Some(c),
            disk_size: Some(32 << 20),
            ..Change::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("can grow but not shrink"), "{e}");
    let mut c = VirtualMachineConfiguration::from_json(&b.configuration().to_json()).unwrap();
    c.memory_size = 1 << 20;
    assert!(b
        .change(Change {
            config: Some(c),
            disk_size: Some(128 << 20),
            ..Change::default()
        })
        .is_err());
    let again = Bundle::open(&home.0, "web").unwrap();
    assert_eq!(again.configuration().cpu_count, 1);
    assert_eq!(again.configuration().memory_size, 128 << 20);
    assert_eq!(again.disk_size().unwrap(), 64 << 20);
}

#[test]
fn sockets_that_would_not_fit_are_refused_at_create() {
    // vms/NAME/control.sock must fit 107 bytes; make the home long enough that it does not.
    let home = Home::new(&"h".repeat(60));
    let fw = home.scratch("bios.bin", &vec![0u8; 128 << 10]);
    let spec = NewBundle {
        cpu_count: 1,
        memory_size: 128 << 20,
        boot: NewBoot::Firmware { path: fw },
        restore_image: None,
        disk_size: Some(1 << 20),
        keep_restore_image: false,
        ports: Vec::new(),
        network_devices: Vec::new(),
        shares: Vec::new(),
        seed: None,
    };
    let e = Bundle::create(&home.0, "a-rather-long-vm-name", &spec, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("a Unix socket address holds"), "{e}");
    assert!(Bundle::list(&home.0).unwrap().is_empty());
}

#[test]
fn system_firmware_needs_no_record_and_nothing_else_does() {
    let seabios = Path::new(DEFAULT_FIRMWARE);
    if !seabios.exists() {
        virtkit_testkit_skip("SeaBIOS is not installed (Debian package seabios)");
        return;
    }
    let home = Home::new("sysfw");
    let b = home.vm("old");
    let ours = home.0.root().join("bios.bin");
    let text = std::fs::read_to_string(b.file(CONFIG_FILE)).unwrap();
    assert!(text.contains(ours.to_str().unwrap()), "{text}");
    // As a bundle made before the record existed: no external-paths.json.
    std::fs::remove_file(b.file(external::EXTERNAL_PATHS_FILE)).unwrap();
    let with = |firmware: &str| {
        std::fs::write(
            b.file(CONFIG_FILE),
            text.replace(ours.to_str().unwrap(), firmware),
        )
        .unwrap();
        Bundle::open(&home.0, "old").unwrap().runtime_configuration()
    };
    assert!(with(DEFAULT_FIRMWARE).is_ok());
    for refused in [ours.to_str().unwrap(), "/usr/share/seabios/../../../etc/passwd"] {
        let e = with(refused).unwrap_err();
        assert!(matches!(e, BundleError::Unrecorded { .. }), "{refused}: {e}");
    }
}

/// The testkit's skip line, without depending on it from a library's unit tests.
fn virtkit_testkit_skip(reason: &str) {
    println!("SKIPPED: {reason}");
}

#[test]
fn a_bundle_that_is_a_link_to_a_directory_elsewhere_is_refused_and_listed_as_damaged() {
    let home = Home::new("dirlink");
    let real = home.vm("real");
    let elsewhere = home.0.root().join("elsewhere");
    std::fs::rename(real.path(), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, home.0.vms_dir().join("real")).unwrap();
    let e = Bundle::open(&home.0, "real").unwrap_err();
    assert!(e.to_string().contains("is a symbolic link"), "{e}");
    let listed = Bundle::list(&home.0).unwrap();
    assert!(
        matches!(listed.as_slice(), [(name, Err(BundleError::Damaged { .. }))] if name == "real"),
        "{listed:?}"
    );
}

#[test]
fn a_shared_directory_must_be_recorded_and_one_given_at_create_is() {
    let home = Home::new("shares");
    let b = home.vm("dev");
    // A hand-edited config that shares the host's /etc is refused.
    let mut config = VirtualMachineConfiguration::from_json(&b.configuration().to_json()).unwrap();
    config
        .directory_sharing_devices
        .push(virtkit::DirectorySharingDeviceConfiguration {
            tag: "etc".into(),
            path: "/etc".into(),
            read_only: true,
        });
    std::fs::write(b.file(CONFIG_FILE), config.to_json()).unwrap();
    let e = Bundle::open(&home.0, "dev")
        .unwrap()
        .runtime_configuration()
        .unwrap_err();
    assert!(e.to_string().contains("directory_sharing_devices[0].path"), "{e}");

    let src = home.0.root().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let fw = home.scratch("bios.bin", &vec![0u8; 128 << 10]);
    let spec = NewBundle {
        cpu_count: 1,
        memory_size: 128 << 20,
        boot: NewBoot::Firmware { path: fw },
        restore_image: None,
        disk_size: Some(64 << 20),
        keep_restore_image: false,
        ports: Vec::new(),
        network_devices: Vec::new(),
        shares: vec![
            virtkit::DirectorySharingDeviceConfiguration::parse_cli(&src.to_string_lossy()).unwrap(),
        ],
        seed: None,
    };
    let b = Bundle::create(&home.0, "shared", &spec, &mut |_, _| {}).unwrap();
    assert!(b.external_paths().contains(&src));
    let runtime = b.runtime_configuration().unwrap();
    assert_eq!(runtime.directory_sharing_devices[0].tag, "src");
}
