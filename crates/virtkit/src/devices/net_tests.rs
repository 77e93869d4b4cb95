use std::os::unix::net::UnixListener;

use super::*;

fn nat(published: Vec<PublishedPort>) -> NetworkDeviceConfiguration {
    NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Nat { published },
    }
}

fn port(host_port: u16, guest_port: u16) -> PublishedPort {
    PublishedPort {
        protocol: PortProtocol::Tcp,
        host_address: localhost(),
        host_port,
        guest_port,
    }
}

fn issues(devices: &[NetworkDeviceConfiguration], id: Option<&MachineIdentifier>) -> Vec<String> {
    let mut issues = Issues(Vec::new());
    validate(devices, id, &mut issues);
    issues.0.into_iter().map(|i| i.to_string()).collect()
}

#[test]
fn json_uses_the_documented_shape_and_defaults() {
    let d: NetworkDeviceConfiguration = serde_json::from_str(
        r#"{"mac": "02:00:00:12:34:56", "attachment": {"type": "nat", "published": [
            {"host_port": 2222, "guest_port": 22}, {"protocol": "udp", "host_address": "0.0.0.0", "host_port": 53, "guest_port": 53}]}}"#,
    )
    .unwrap();
    let NetworkAttachment::Nat { published } = &d.attachment else {
        panic!("a NAT attachment")
    };
    assert_eq!(published[0], port(2222, 22));
    assert_eq!(published[1].protocol, PortProtocol::Udp);
    let s: NetworkDeviceConfiguration =
        serde_json::from_str(r#"{"attachment": {"type": "socket", "path": "/run/n.sock"}}"#).unwrap();
    assert!(matches!(
        s.attachment,
        NetworkAttachment::Socket {
            framing: Framing::Stream,
            ..
        }
    ));
    let g: NetworkDeviceConfiguration = serde_json::from_str(
        r#"{"attachment": {"type": "socket", "path": "/run/n.sock", "framing": "datagram"}}"#,
    )
    .unwrap();
    assert!(matches!(
        g.attachment,
        NetworkAttachment::Socket {
            framing: Framing::Datagram,
            ..
        }
    ));
    assert!(serde_json::from_str::<NetworkDeviceConfiguration>(
        r#"{"attachment": {"type": "nat", "ports": []}}"#
    )
    .is_err());
    assert!(serde_json::from_str::<NetworkDeviceConfiguration>(
        r#"{"attachment": {"type": "nat", "published": [{"host_port": 70000, "guest_port": 1}]}}"#
    )
    .is_err());
    // Round trip: a card without published ports writes no empty list.
    assert_eq!(
        serde_json::to_string(&nat(vec![])).unwrap(),
        r#"{"attachment":{"type":"nat"}}"#
    );
}

#[test]
fn macs_parse_and_bad_ones_say_how_to_write_one() {
    assert_eq!(parse_mac("02:00:00:12:34:5f"), Ok([2, 0, 0, 0x12, 0x34, 0x5f]));
    for bad in [
        "",
        "02:00:00:12:34",
        "02:00:00:12:34:5g",
        "02-00-00-12-34-56",
        "002:00:00:12:34:56",
    ] {
        let e = parse_mac(bad).unwrap_err();
        assert!(e.contains("six hex pairs"), "{bad}: {e}");
    }
    assert!(parse_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
}

#[test]
fn macs_come_from_the_configuration_the_identifier_or_the_default() {
    let id: MachineIdentifier = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b".parse().unwrap();
    let given = NetworkDeviceConfiguration {
        mac: Some("02:00:00:00:00:09".into()),
        ..nat(vec![])
    };
    assert_eq!(mac_for(&given, 0, Some(&id)), Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(mac_for(&nat(vec![]), 1, Some(&id)), Some(id.mac_address(1)));
    assert_eq!(mac_for(&nat(vec![]), 1, None), Some([0x02, 0x76, 0x6b, 0, 0, 1]));
    assert_ne!(mac_for(&nat(vec![]), 0, None), mac_for(&nat(vec![]), 1, None));
}

#[test]
fn validation_reports_every_problem_with_its_fix() {
    let multicast = NetworkDeviceConfiguration {
        mac: Some("03:00:00:00:00:01".into()),
        ..nat(vec![])
    };
    let twin = NetworkDeviceConfiguration {
        mac: Some("02:76:6b:00:00:00".into()),
        ..nat(vec![port(0, 22), port(2222, 22), port(2222, 23)])
    };
    let missing = NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Socket {
            path: "/nonexistent/net.sock".into(),
            framing: Framing::Stream,
            listen: false,
        },
    };
    let file = NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Socket {
            path: "/etc/hostname".into(),
            framing: Framing::Datagram,
            listen: false,
        },
    };
    // Card 0 gets the default 02:76:6b:00:00:00, which card 1 also names.
    let found = issues(&[nat(vec![]), twin, multicast, missing, file], None);
    let expect = [
        "network_devices[1].mac: 02:76:6b:00:00:00 is also network_devices[0]'s MAC address",
        "network_devices[1].attachment.published[0]: port 0 cannot be published",
        "network_devices[1].attachment.published[2]: host port 127.0.0.1:2222 is already published",
        "network_devices[2].mac: 03:00:00:00:00:01 is a multicast MAC address",
        "network_devices[3].attachment.path: /nonexistent/net.sock does not exist",
        "network_devices[4].attachment.path: /etc/hostname is not a Unix socket",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (got, want) in found.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\nwanted {want}");
    }
}

#[test]
fn a_listening_socket_and_distinct_udp_and_tcp_ports_pass() {
    let dir = std::env::temp_dir().join(format!("virtkit-net-valid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.sock");
    let _ = std::fs::remove_file(&path);
    let _listener = UnixListener::bind(&path).unwrap();
    let mut udp = port(2222, 22);
    udp.protocol = PortProtocol::Udp;
    let socket = NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Socket {
            path: path.clone(),
            framing: Framing::Stream,
            listen: false,
        },
    };
    assert_eq!(
        issues(&[nat(vec![port(2222, 22), udp]), socket], None),
        Vec::<String>::new()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listening_attachment_needs_stream_framing_and_a_free_path_in_a_directory() {
    let listen = |path: &str, framing| NetworkDeviceConfiguration {
        mac: None,
        attachment: NetworkAttachment::Socket {
            path: path.into(),
            framing,
            listen: true,
        },
    };
    let free = std::env::temp_dir().join(format!("virtkit-net-listen-free-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&free);
    assert!(issues(&[listen(free.to_str().unwrap(), Framing::Stream)], None).is_empty());
    let found = issues(
        &[
            listen(free.to_str().unwrap(), Framing::Datagram),
            listen("/etc/hostname", Framing::Stream),
            listen("/nonexistent/dir/n.sock", Framing::Stream),
        ],
        None,
    );
    let expect = [
        "network_devices[0].attachment: a listening socket attachment takes stream framing",
        "network_devices[1].attachment: /etc/hostname exists and is not a socket",
        "network_devices[2].attachment: /nonexistent/dir is not a directory",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (got, want) in found.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\nwanted {want}");
    }
}

#[test]
fn tap_and_bridge_attachments_have_their_json_shape() {
    let card = |json: &str| {
        serde_json::from_str::<NetworkDeviceConfiguration>(json)
            .unwrap()
            .attachment
    };
    assert_eq!(
        card(r#"{"attachment": {"type": "tap", "name": "tap3"}}"#),
        NetworkAttachment::Tap {
            name: Some("tap3".into())
        }
    );
    assert_eq!(
        card(r#"{"attachment": {"type": "tap"}}"#),
        NetworkAttachment::Tap { name: None }
    );
    assert_eq!(
        card(r#"{"attachment": {"type": "bridge", "bridge": "br0"}}"#),
        NetworkAttachment::Bridge { bridge: "br0".into() }
    );
    let out = serde_json::to_string(&NetworkAttachment::Tap { name: None }).unwrap();
    assert_eq!(out, r#"{"type":"tap"}"#);
    assert!(
        serde_json::from_str::<NetworkDeviceConfiguration>(r#"{"attachment": {"type": "bridge"}}"#).is_err()
    );
    assert!(serde_json::from_str::<NetworkDeviceConfiguration>(
        r#"{"attachment": {"type": "tap", "bridge": "br0"}}"#
    )
    .is_err());
}

#[test]
fn tap_and_bridge_names_the_kernel_refuses_are_one_sentence_each() {
    let card = |attachment| NetworkDeviceConfiguration {
        mac: None,
        attachment,
    };
    let long = "vk0123456789abcdef";
    let found = issues(
        &[
            card(NetworkAttachment::Tap {
                name: Some(long.into()),
            }),
            card(NetworkAttachment::Tap {
                name: Some("a/b".into()),
            }),
        ],
        None,
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("network_devices[0].attachment.name:")
            && found[0].contains(&format!(
                "`{long}` is not a usable interface name: it must be 1 to 15 bytes (IFNAMSIZ)"
            )),
        "{found:?}"
    );
    assert!(
        found[1].contains("`a/b` is not a usable interface name"),
        "{found:?}"
    );
    let found = issues(
        &[
            card(NetworkAttachment::Tap {
                name: Some("vktwice".into()),
            }),
            card(NetworkAttachment::Tap {
                name: Some("vktwice".into()),
            }),
        ],
        None,
    );
    assert!(
        found
            .iter()
            .any(|i| i.contains("TAP vktwice is also network_devices[0]'s; give each card its own TAP")),
        "{found:?}"
    );
    let found = issues(
        &[card(NetworkAttachment::Bridge {
            bridge: "vkbr-missing".into(),
        })],
        None,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    // Without root the missing privilege is said first; as root the missing bridge.
    assert!(
        found[0].contains("bridge vkbr-missing does not exist; create it")
            || found[0].contains("needs root (or CAP_NET_ADMIN"),
        "{found:?}"
    );
}

#[test]
fn created_tap_names_fit_ifnamsiz() {
    let name = crate::network::tap::created_name(29);
    assert!(name.starts_with("vk") && name.ends_with("n29"), "{name}");
    assert!(name.len() <= virtkit_devices::net::tap::MAX_NAME_LEN, "{name}");
    // The largest pid Linux hands out (PID_MAX_LIMIT, 2^22) and the last PCI slot still fit.
    assert_eq!(format!("vk{:x}n{}", 1u32 << 22, 29).len(), 11);
}
