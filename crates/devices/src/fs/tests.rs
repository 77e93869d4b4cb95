use super::*;

#[test]
fn configuration_space_is_the_nul_padded_tag_then_the_request_queue_count() {
    let config = config_space("src", 1);
    assert_eq!(&config[..3], b"src");
    assert!(config[3..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&config[TAG_LEN..], &1u32.to_le_bytes());
    // A 36-byte tag fills the field with no terminator, as the specification allows.
    let long = "a".repeat(TAG_LEN);
    let config = config_space(&long, 2);
    assert_eq!(&config[..TAG_LEN], long.as_bytes());
    assert_eq!(&config[TAG_LEN..], &2u32.to_le_bytes());
    // Reads past the end are zero, as for every device.
    let mut beyond = [0xffu8; 4];
    read_config_bytes(&config, TAG_LEN as u64 + 2, &mut beyond);
    assert_eq!(beyond, [0, 0, 0, 0]);
}

#[test]
fn tags_are_checked() {
    assert_eq!(check_tag("data"), Ok(()));
    assert_eq!(check_tag(""), Err(FsError::EmptyTag));
    assert_eq!(check_tag(&"x".repeat(36)), Ok(()));
    let err = check_tag(&"x".repeat(37)).unwrap_err();
    assert!(err.to_string().contains("37 bytes"), "{err}");
    // Bytes, not characters: 19 two-byte characters are 38 bytes.
    assert!(matches!(
        check_tag(&"é".repeat(19)),
        Err(FsError::TagTooLong { len: 38, .. })
    ));
    assert!(matches!(check_tag("a\0b"), Err(FsError::NulInTag { .. })));
}
