//! The encoder, decoder and Noise by hand against the specification's examples and fixtures

use super::*;

fn vector_hex(file: &serde_json::Value, name: &str) -> String {
    let v = file["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name);
    v.unwrap_or_else(|| panic!("no vector {name}"))["hex"].as_str().unwrap().to_owned()
}

fn id_of(secret_byte: u8) -> Hash {
    Identity::from_secret(&[secret_byte; 32]).id()
}

#[test]
fn encoder_and_decoder_reproduce_the_spec_vectors() {
    let v2 = fixture("v2-vectors.json");
    let v1 = fixture("protocol-vectors.json");
    let h_pex = sha(b"pex");
    assert_eq!(hex(&h_pex), "262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a");

    // The initiator's HELLO of section 8 (its signature is checked in the worked example test).
    let hello_sig: [u8; 64] = unhex(concat!(
        "b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b",
        "0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"
    ))
    .try_into()
    .unwrap();
    let init_id = id_of(1);
    assert_eq!(hex(&init_id), "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
    let fifty: Vec<Entry> = (0..50u8)
        .map(|i| {
            let ip = if i % 2 == 0 {
                ipv4(&format!("10.0.0.{i}"))
            } else {
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)
            };
            (sha(&[b"peer", &[i][..]].concat()), ip, 9000 + i as u16)
        })
        .collect();

    // The rooms examples (section "Rooms"): room "lobby", message id 00 01 … 0f, origin the
    // identity of secret 03…03.
    let lobby = room_id("lobby");
    assert_eq!(hex(&lobby), "6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91");
    let msg_id: MessageId = std::array::from_fn(|i| i as u8);
    let origin = Identity::from_secret(&[3; 32]);
    assert_eq!(origin.id(), id_of(3));
    let hello_room_sig = origin.sign_room_message(&lobby, &msg_id, b"hello, room");
    // 4.16: seq 1796688000000 (ms since 1970), then one more when it leaves.
    let seq: u64 = 1_796_688_000_000;
    let here_sig = origin.sign_presence(&lobby, seq, 0);
    let leaving_sig = origin.sign_presence(&lobby, seq + 1, 1);

    // (name, our encoding, the hex quoted in docs/PROTOCOL.md, or "" where the spec quotes none)
    let valid: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hello", hello_frame(&init_id, 9001, 1, &hello_sig), "0000006803504558028a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c232901b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"),
        ("hello_not_listening", hello_frame(&init_id, 0, 0, &hello_sig), "0000006803504558028a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c000000b27901c63a92208f5780e5420b7672dab91c65fb1fe98768500c3f97228d496b0d4688ecebe42b36575796fdce0fa252e10c1c7f7742010dfaeb8c5a5091bd09"),
        ("hello_other_flags", hello_frame(&init_id, 9001, 0xfe, &hello_sig), ""),
        ("peers_empty", peers(&[]), "0000000102"),
        ("peers_one", peers(&[(id_of(3), ipv4("192.0.2.7"), 9000)]), "0000003302ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d100000000000000000000ffffc00002072328"),
        (
            "peers_two",
            peers(&[(id_of(4), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9000), (id_of(5), ipv4("127.0.0.1"), 6881)]),
            "0000006502ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c20010db800000000000000000000000123286e7a1cdd29b0b78fd13af4c5598feff4ef2a97166e3ca6f2e4fbfccd80505bf100000000000000000000ffff7f0000011ae1",
        ),
        ("peers_fifty", peers(&fifty), ""),
        ("bitfield", bitfield(&h_pex, 0, &bits_where(10, |i| [0, 2, 9].contains(&i))), "0000002705262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a00000000a040"),
        ("bitfield_empty", bitfield(&h_pex, 0, &[]), ""),
        ("bitfield_range", bitfield(&h_pex, 8_388_576, &[0x80, 0x00, 0x01]), "0000002805262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a007fffe0800001"),
        ("bitfield_last", bitfield(&h_pex, 4_294_967_288, &[0xff]), "0000002605262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932afffffff8ff"),
        ("reject_full", reject(2, 5, "peer limit reached"), "000000160702000570656572206c696d69742072656163686564"),
        ("reject_shutdown", reject(6, 10, "shutting down"), "000000110706000a7368757474696e6720646f776e"),
        ("reject_empty", reject(1, 0, ""), "0000000407010000"),
        ("join", join_room(&lobby), "00000021096580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91"),
        ("leave", leave_room(&lobby), "000000210a6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91"),
        ("members_one", members(&lobby, &[(id_of(3), ipv4("192.0.2.7"), 9000)]), "000000530b6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d100000000000000000000ffffc00002072328"),
        ("members_none", members(&lobby, &[]), ""),
        ("message", message(&lobby, &msg_id, &id_of(3), 8, &hello_room_sig, b"hello, room"), "0000009d0c6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91000102030405060708090a0b0c0d0e0fed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1080a1b45407d14944ea525c887522a34541d5a417e0f96c4c2db3ee90cb8e4b78fe0838fe3aae5780de91d1099341e2925fba2f62881408cf1b691a173126cd00168656c6c6f2c20726f6f6d"),
        ("direct", direct(&lobby, &msg_id, b"hi there"), "000000390d6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91000102030405060708090a0b0c0d0e0f6869207468657265"),
        ("direct_largest", direct(&lobby, &msg_id, &[b'a'; MAX_ROOM_PAYLOAD]), ""),
        ("presence", presence(&lobby, &id_of(3), seq, 0, 8, &here_sig), "0000008b0e6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1000001a252f3340000083877bb058f037e82966809f1e0c6b537b1024be621111ed91b355be7c7df8e7385cabcb0e08b17861d00159611cdffd7f12be8c61c532d930af77a58adb23e01"),
        ("presence_leaving", presence(&lobby, &id_of(3), seq + 1, 1, 8, &leaving_sig), "0000008b0e6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1000001a252f3340101087aeef5308d09729f1f4dc535d706ecf080e9ac9c01f7fa17473415c8fc33a55578050a818d41a73e0d0f41a0ee4a415c8a03fdcb9a22e8b8249794749c83fa08"),
    ];
    for (name, ours, quoted) in &valid {
        let fixture = vector_hex(&v2, name);
        assert_eq!(hex(ours), fixture, "v2 vector {name}: our encoding");
        if !quoted.is_empty() {
            assert_eq!(*quoted, fixture, "v2 vector {name}: the spec quotes other bytes than the fixture");
        }
        let f = decode_frames(ours).unwrap_or_else(|e| panic!("v2 vector {name}: our decoder says {e}"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].wire(), *ours, "v2 vector {name} decoded and re-encoded");
    }
    // Every valid v2 vector is covered above.
    let valid_names: HashSet<&str> = valid.iter().map(|v| v.0).collect();
    for v in v2["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if v["valid"] == true {
            assert!(valid_names.contains(name), "v2 vector {name} is not reproduced by this test");
        }
    }

    // 4.14: the MESSAGE vector's signature verifies, by its origin only, over room, id and
    // payload but not hops.
    let m = parse_message(&decode_frames(&unhex(&vector_hex(&v2, "message"))).unwrap()[0].body);
    assert_eq!((m.room, m.id, m.origin, m.hops, &m.payload[..]), (lobby, msg_id, id_of(3), 8, &b"hello, room"[..]));
    assert!(room_message_signature_ok(&m), "the signature of the v2 vector message");
    assert_eq!(origin.room_message(&lobby, &msg_id, 8, b"hello, room"), unhex(&vector_hex(&v2, "message")));
    for i in 0..m.payload.len() {
        let mut payload = m.payload.clone();
        payload[i] ^= 1;
        assert!(!room_message_signature_ok(&RoomMessage { payload, ..m.clone() }), "payload byte {i} changed");
    }
    assert!(
        !room_message_signature_ok(&RoomMessage { payload: b"hello, room!".to_vec(), ..m.clone() }),
        "a byte added"
    );
    assert!(!room_message_signature_ok(&RoomMessage { id: [0; 16], ..m.clone() }), "another id");
    assert!(!room_message_signature_ok(&RoomMessage { room: room_id("lobby2"), ..m.clone() }), "another room");
    assert!(!room_message_signature_ok(&RoomMessage { origin: id_of(4), ..m.clone() }), "another origin");
    assert!(room_message_signature_ok(&RoomMessage { hops: 7, ..m.clone() }), "hops is not signed");

    // 4.16: the PRESENCE vectors' signatures are the origin's over room, seq and state, but not
    // hops; our identity of secret 03…03 reproduces both frames.
    for (name, seq, state) in [("presence", seq, 0), ("presence_leaving", seq + 1, 1)] {
        let wire = unhex(&vector_hex(&v2, name));
        let p = parse_presence(&decode_frames(&wire).unwrap()[0].body);
        assert_eq!((p.room, p.origin, p.seq, p.state, p.hops), (lobby, id_of(3), seq, state, 8), "{name}");
        assert!(presence_signature_ok(&p), "the signature of the v2 vector {name}");
        assert_eq!(p.sig, origin.sign_presence(&lobby, seq, state), "{name}: our signature");
        assert_eq!(origin.presence(&lobby, seq, state, 8), wire, "{name}: our identity's frame");
        assert!(!presence_signature_ok(&Presence { seq: seq + 2, ..p.clone() }), "{name}: another seq");
        assert!(!presence_signature_ok(&Presence { state: state ^ 1, ..p.clone() }), "{name}: another state");
        assert!(!presence_signature_ok(&Presence { room: room_id("lobby2"), ..p.clone() }), "{name}: another room");
        assert!(!presence_signature_ok(&Presence { origin: id_of(4), ..p.clone() }), "{name}: another origin");
        assert!(presence_signature_ok(&Presence { hops: 7, ..p.clone() }), "{name}: hops is not signed");
    }
    assert_ne!(here_sig, leaving_sig);

    let (room, entries) = parse_members(&decode_frames(&unhex(&vector_hex(&v2, "members_one"))).unwrap()[0].body);
    assert_eq!((room, entries), (lobby, vec![(id_of(3), ipv4("192.0.2.7"), 9000)]));

    // The invalid vectors: our encoding of what each note describes, and our decoder's verdict.
    let hello_body = &unhex(&vector_hex(&v2, "hello"))[5..];
    let invalid: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hello_102", frame(HELLO, &hello_body[..102]), "BadLength"),
        ("hello_104", frame(HELLO, &[hello_body, &[0]].concat()), "BadLength"),
        ("hello_v1", frame(HELLO, &[b"PEX\x01", &init_id[..], &[0x23, 0x28]].concat()), "BadLength"),
        ("hello_version_1", frame(HELLO, &[b"PEX\x01", &hello_body[4..]].concat()), "BadVersion"),
        ("hello_bad_magic", frame(HELLO, &[b"PEY\x02", &hello_body[4..]].concat()), "BadMagic"),
        ("peers_49", frame(PEERS, &unhex(&vector_hex(&v2, "peers_fifty"))[5..54]), "BadLength"),
        (
            "peers_51_entries",
            frame(
                PEERS,
                &[&unhex(&vector_hex(&v2, "peers_fifty"))[5..], &unhex(&vector_hex(&v2, "peers_fifty"))[5..55]]
                    .concat(),
            ),
            "BadLength",
        ),
        ("peers_v1_entry", frame(PEERS, &[&Ipv6Addr::LOCALHOST.octets()[..], &[0x23, 0x28]].concat()), "BadLength"),
        ("bitfield_35", frame(BITFIELD, &[&h_pex[..], &[0, 0, 0]].concat()), "BadLength"),
        ("bitfield_past_end", bitfield(&h_pex, 4_294_967_289, &[0x80]), "BitfieldRange"),
        ("reject_2", frame(REJECT, &[2, 0]), "BadLength"),
        ("reject_reason_201", reject(3, 0, &"x".repeat(201)), "BadLength"),
        ("reject_not_utf8", frame(REJECT, &[3, 0, 0, 0xff]), "ReasonNotUtf8"),
        ("join_31", frame(JOIN, &lobby[..31]), "BadLength"),
        (
            "members_49",
            frame(MEMBERS, &[&lobby[..], &unhex(&vector_hex(&v2, "peers_fifty"))[5..54]].concat()),
            "BadLength",
        ),
        // 4.14 calls this "the same head" as `message`, but its signature is that of an empty
        // payload (the head of the MESSAGE "hello, room" would differ in the signature).
        (
            "message_144",
            frame(MESSAGE, &origin.room_message(&lobby, &msg_id, 8, b"")[5..4 + MESSAGE_HEAD]),
            "BadLength",
        ),
        ("direct_too_large", direct(&lobby, &msg_id, &[b'a'; MAX_ROOM_PAYLOAD + 1]), "BadLength"),
        // 4.16: "the `presence` vector cut one byte short".
        ("presence_137", frame(PRESENCE, &origin.presence(&lobby, seq, 0, 8)[5..4 + PRESENCE_BODY]), "BadLength"),
    ];
    let mut invalid_names = HashSet::new();
    for (name, ours, error) in &invalid {
        invalid_names.insert(*name);
        let v = v2["vectors"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
        assert_eq!(v["valid"], false, "{name}");
        assert_eq!(v["error"], *error, "{name}: the fixture's error");
        let fixture = v["hex"].as_str().unwrap();
        // The content of peers_49, peers_51_entries, members_49 and direct_too_large is not
        // described beyond their lengths.
        if !["peers_49", "peers_51_entries", "reject_reason_201", "members_49", "direct_too_large"].contains(name) {
            assert_eq!(hex(ours), fixture, "invalid v2 vector {name}: our encoding of its note");
        }
        assert_eq!(decode_frames(ours).err(), Some(*error), "invalid v2 vector {name}, ours");
        assert_eq!(decode_frames(&unhex(fixture)).err(), Some(*error), "invalid v2 vector {name}, fixture");
    }
    for v in v2["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if v["valid"] == false {
            assert!(invalid_names.contains(name), "invalid v2 vector {name} is not checked by this test");
        }
    }
    // Section 3's invalid examples, as it quotes them (v1 vectors, and v2 ones; message_144 in 4.14,
    // presence_137 in 4.16).
    let join_31 = "00000020096580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf";
    let message_144 = "000000910c6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91000102030405060708090a0b0c0d0e0fed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d108d69e94f2af2e4df3d4e03a09daa0bbcd27b0ce7243776b78dbc7f423447ab60b34ebcab5883cacabdc5401442e00115ec4e5774f8c7825eb3a8b7cba5662b0";
    assert_eq!(join_31, vector_hex(&v2, "join_31"), "section 3 quotes other bytes than the fixture");
    assert_eq!(message_144, vector_hex(&v2, "message_144"), "4.14 quotes other bytes than the fixture");
    let presence_137 = "0000008a0e6580e362b37f6f807d9d3db28cca8210eb95034acae079062c7bbb36a768cf91ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1000001a252f3340000083877bb058f037e82966809f1e0c6b537b1024be621111ed91b355be7c7df8e7385cabcb0e08b17861d00159611cdffd7f12be8c61c532d930af77a58adb23e";
    assert_eq!(presence_137, vector_hex(&v2, "presence_137"), "4.16 quotes other bytes than the fixture");
    for (hex_, error) in [
        ("0010002201", "TooLong"),
        ("0000002000262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab27184979893", "BadLength"),
        ("0000002306262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a0001", "BadLength"),
        ("0000002703504558018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c2328", "BadLength"),
        ("0000003202610e1488aaeb77f824a0d4d97841d33c6b7e68864f3cba7e5a084ce8d8cdaf6500000000000000000000ffff0a00000023", "BadLength"),
        ("0000001302000000000000000000000000000000012328", "BadLength"),
        ("0000002405262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932a000000", "BadLength"),
        ("0000002605262f0d56e252a408a2cd66e65f1b32cca3633518067a7a773ab271849798932afffffff980", "BitfieldRange"),
        ("00000003070200", "BadLength"),
        ("0000000507030000ff", "ReasonNotUtf8"),
        (join_31, "BadLength"),
        (message_144, "BadLength"),
        (presence_137, "BadLength"),
    ] {
        assert_eq!(decode_frames(&unhex(hex_)).err(), Some(error), "section 3 invalid example {hex_}");
    }

    // Types 15 to 255 are unknown (section 3): any length up to the maximum `L` is valid framing.
    for ty in [15u8, 200, 255] {
        for body in [&[][..], &[0; 31][..], &vec![0; MAX_L - 1][..]] {
            assert!(decode_frames(&frame(ty, body)).is_ok(), "type {ty} with a body of {} bytes", body.len());
        }
        assert_eq!(decode_frames(&frame(ty, &vec![0; MAX_L])).err(), Some("TooLong"), "type {ty}");
    }

    // Section 3's upper bounds for MEMBERS and MESSAGE, which no vector reaches: 50 entries,
    // 65,536 bytes of payload.
    let sig = [0; 64];
    assert!(decode_frames(&members(&lobby, &fifty)).is_ok());
    assert_eq!(decode_frames(&members(&lobby, &[&fifty[..], &fifty[..1]].concat())).err(), Some("BadLength"));
    let largest = vec![b'a'; MAX_ROOM_PAYLOAD];
    assert!(decode_frames(&message(&lobby, &msg_id, &id_of(3), 0, &sig, &largest)).is_ok());
    let over = vec![b'a'; MAX_ROOM_PAYLOAD + 1];
    assert_eq!(decode_frames(&message(&lobby, &msg_id, &id_of(3), 0, &sig, &over)).err(), Some("BadLength"));

    // Section 3: a PRESENCE body is exactly 138 bytes, no more, no less (type 14 is no longer
    // unknown); its state is not the codec's business (4.16: receivers ignore other states).
    let here = unhex(&vector_hex(&v2, "presence"));
    for n in [0, 31, PRESENCE_BODY - 1, PRESENCE_BODY + 1, MAX_L - 1] {
        let body: Vec<u8> = here[5..].iter().copied().chain(std::iter::repeat(0)).take(n).collect();
        assert_eq!(decode_frames(&frame(PRESENCE, &body)).err(), Some("BadLength"), "PRESENCE body of {n} bytes");
    }
    assert_eq!(decode_frames(&frame(PRESENCE, &vec![0; MAX_L])).err(), Some("TooLong"));
    for state in [2u8, 0xff] {
        let f = presence(&lobby, &id_of(3), seq, state, 0, &sig);
        assert!(decode_frames(&f).is_ok(), "PRESENCE with state {state}");
    }

    // The frame types version 2 did not change: the v1 vectors, and the v1 layouts of appendix A
    // for the four that changed.
    let unchanged: Vec<(&str, Vec<u8>)> = vec![
        ("keepalive", keepalive()),
        ("ask", ask(&h_pex)),
        ("give", give(b"hello, swarm\n")),
        ("give_empty", give(b"")),
        ("peers_empty", peers(&[])),
        ("dont_have", dont_have(&h_pex)),
        ("have", have(&h_pex, 70000)),
        ("cancel", cancel(&h_pex)),
        ("unknown_type", frame(200, b"future")),
    ];
    for (name, ours) in &unchanged {
        let fixture = vector_hex(&v1, name);
        assert_eq!(hex(ours), fixture, "v1 vector {name}");
        let f = decode_frames(ours).unwrap_or_else(|e| panic!("v1 vector {name}: {e}"));
        assert_eq!(f[0].wire(), *ours);
    }
    let id: Hash = std::array::from_fn(|i| i as u8);
    let v1_layouts: Vec<(&str, Vec<u8>)> = vec![
        ("hello", frame(HELLO, &[b"PEX\x01", &id[..], &9000u16.to_be_bytes()].concat())),
        (
            "peers_two",
            frame(
                PEERS,
                &[&Ipv6Addr::LOCALHOST.octets()[..], &[0x23, 0x28], &ipv4("127.0.0.1").octets(), &[0x1a, 0xe1]]
                    .concat(),
            ),
        ),
        ("bitfield", frame(BITFIELD, &[&h_pex[..], &[0xa0, 0x40]].concat())),
        ("reject_full", frame(REJECT, &[&[2u8][..], b"peer limit reached"].concat())),
    ];
    for (name, ours) in &v1_layouts {
        assert_eq!(hex(ours), vector_hex(&v1, name), "v1 vector {name} (appendix A layout)");
    }
    // Appendix A: a v1 REJECT with a reason of 2 bytes or more decodes as a v2 REJECT.
    let f = decode_frames(&unhex(&vector_hex(&v1, "reject_full"))).unwrap();
    assert_eq!((f[0].body[0], f[0].retry_after(), f[0].reason()), (2, 0x7065, "er limit reached".to_owned()));

    // 2.5: the plaintext v1 REJECT(3) a v2 node answers a v1 dialler with.
    let reason = "this node speaks pex/2 (Noise_XX_25519_AESGCM_SHA256); upgrade pex";
    let v1_answer = frame(REJECT, &[&[3u8][..], reason.as_bytes()].concat());
    assert_eq!(v1_answer.len(), 72);
    assert_eq!(hex(&v1_answer), v2["v1_answer"]["hex"].as_str().unwrap());
    assert_eq!(
        hex(&v1_answer),
        "00000044070374686973206e6f646520737065616b73207065782f3220284e6f6973655f58585f32353531395f41455347434d5f534841323536293b207570677261646520706578"
    );

    // Section 6.1: the manifest of hello.txt, the fixture files and the frames of its download.
    let content = b"hello, swarm\n";
    let (manifest, lists) = make_manifest("hello.txt", content);
    assert_eq!(
        hex(&manifest),
        "5045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    assert_eq!(fs::read(dir.join("hello.manifest")).unwrap(), manifest, "fixtures/hello.manifest");
    assert_eq!(fs::read(dir.join("hello.list")).unwrap(), lists[0], "fixtures/hello.list");
    assert_eq!(hex(&sha(content)), "3a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76");
    assert_eq!(hex(&sha(&lists[0])), "7fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8");
    let root = sha(&manifest);
    assert_eq!(hex(&root), "d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4");
    let m = parse_manifest(&manifest);
    assert_eq!((m.name.as_str(), m.size, m.lists.len()), ("hello.txt", 13, 1));
    for (name, ours, quoted) in [
        ("ASK root", ask(&root), "0000002100d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de4"),
        ("GIVE manifest", give(&manifest), "0000006101d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de45045584d0100100000000000000000000d000968656c6c6f2e747874000000017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d8"),
        ("GIVE list", give(&lists[0]), "00000041017fb72fd845b3b37be652e6155323f0e2d9437c671b08cba3850862cf152851d83a2ec73c897660e1919f07a073a741d8e9ba378834fa3b4947d84cb52e03ca76"),
        ("BITFIELD (all)", bitfield(&root, 0, &full_bits(1)), "0000002605d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de40000000080"),
        ("HAVE 0", have(&root, 0), "0000002506d8a91989693ed9c336e2abb85e7b8163f8d9a178ca7b04c9aee1945ad1da9de400000000"),
    ] {
        assert_eq!(hex(&ours), quoted, "6.1 {name}");
    }
    assert_eq!(full_bits(10), [0xff, 0xc0]);
}

/// Section 8 and 2.4 from the fixed keys: the handshake by hand, the HELLO signatures, the
/// transport messages, each byte for byte; then the same handshake through `snow`.
#[test]
fn worked_example_connection_is_reproduced_from_its_keys() {
    let fx = fixture("v2-connection.json");
    let s = |v: &serde_json::Value| -> Vec<u8> { unhex(v.as_str().unwrap()) };
    let k = |v: &serde_json::Value| -> Hash { s(v).try_into().unwrap() };
    assert_eq!(fx["protocol_name"].as_str().unwrap().as_bytes(), PROTOCOL_NAME);
    assert_eq!(s(&fx["prologue"]), PROLOGUE);
    assert_eq!(hex(PROLOGUE), "7065782f32");
    assert_eq!(hex(HELLO_CONTEXT), "7065782f322068656c6c6f");

    // Keys (the table of section 8).
    let (ini, res) = (&fx["initiator"], &fx["responder"]);
    for (side, id_hex) in [
        (ini, "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"),
        (res, "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"),
    ] {
        let me = Identity::from_secret(&k(&side["identity_secret"]));
        assert_eq!(hex(&me.id()), id_hex);
        assert_eq!(me.id(), k(&side["node_id"]));
        assert_eq!(x25519_public(&k(&side["static_secret"])), k(&side["static_public"]));
        assert_eq!(x25519_public(&k(&side["ephemeral_secret"])), k(&side["ephemeral_public"]));
    }
    assert_eq!(hex(&x25519_public(&[0x11; 32])), "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13");
    assert_eq!(hex(&x25519_public(&[0x12; 32])), "052a50773ac8d91773f2dc9662e12f0defe915e415b8a1c8e20a5a3d6ab2b843");
    assert_eq!(hex(&x25519_public(&[0x21; 32])), "7d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44");
    assert_eq!(hex(&x25519_public(&[0x22; 32])), "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20");

    // The handshake, both sides by hand.
    let mut i = Noise::new(PROLOGUE, [0x11; 32], [0x21; 32]);
    let mut r = Noise::new(PROLOGUE, [0x12; 32], [0x22; 32]);
    let m1 = lp(&i.write1());
    r.read1(&m1[2..]).unwrap();
    let m2 = lp(&r.write2());
    i.read2(&m2[2..]).unwrap();
    let m3 = lp(&i.write3());
    r.read3(&m3[2..]).unwrap();
    assert_eq!(i.rs, x25519_public(&[0x12; 32]), "the initiator learned the responder's static key");
    assert_eq!(r.rs, x25519_public(&[0x11; 32]), "the responder learned the initiator's static key");
    let spec_handshake = [
        "00207d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44",
        "00600faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20d09d69a7cccb18cb17825eb989774e4cafdf6cad04fdc2c899f80184eb08a47f7c6a72987ed66d35d0eb6b6c40e6d649795160f5924ef7eeb30750e4530353ea",
        "00409e3dbdca364b15045bd673dc69d03bf39cd7215a2401b7736811239cca54b21ba2f3d05014aff855b1c96b803392bb0d465fb29a16a5fcdab7a44de7b428557e",
    ];
    for (n, (ours, from)) in [(&m1, "initiator"), (&m2, "responder"), (&m3, "initiator")].into_iter().enumerate() {
        assert_eq!(hex(ours), spec_handshake[n], "handshake message {}", n + 1);
        assert_eq!(fx["handshake"][n]["from"], from);
        assert_eq!(hex(ours), fx["handshake"][n]["hex"].as_str().unwrap(), "handshake message {} (fixture)", n + 1);
    }
    assert_eq!((m1.len(), m2.len(), m3.len()), (34, 98, 66), "the table of 2.3");
    let (h, k1, k2) = i.finish();
    assert_eq!(r.finish(), (h, k1, k2), "both sides agree");
    assert_eq!(hex(&h), "9dad3a29cd469c868fccfb2ff1394f8e3449efcdd90fb0ebdcfce66f9548dfa4");
    assert_eq!(hex(&k1), "5a04d5f504c07612d35bbc99091a30afb6fcb8620aac352e372ca4425656d965");
    assert_eq!(hex(&k2), "c3ab8ab0730cc633531f60c0bbc0e515792e133f9049623855ae81303a206f2a");
    assert_eq!(h, k(&fx["handshake_hash"]));
    assert_eq!(k1, k(&fx["transport_keys"]["initiator_to_responder"]));
    assert_eq!(k2, k(&fx["transport_keys"]["responder_to_initiator"]));

    // The frames of the transport table, from our encoder, each sealed at its nonce.
    let init = Identity::from_secret(&[1; 32]);
    let resp = Identity::from_secret(&[2; 32]);
    let init_hello = init.hello(&h, 9001, 1);
    let resp_hello = resp.hello(&h, 9000, 1);
    assert!(hello_signature_ok(&init.id(), &h, &parse_hello(&init_hello[5..]).sig));
    assert!(hello_signature_ok(&resp.id(), &h, &parse_hello(&resp_hello[5..]).sig));
    assert!(!hello_signature_ok(&resp.id(), &h, &parse_hello(&init_hello[5..]).sig), "a HELLO proves only its signer");
    let (manifest, _) = make_manifest("hello.txt", b"hello, swarm\n");
    let root = sha(&manifest);
    let frames: Vec<(&str, u64, Vec<u8>)> = vec![
        ("initiator", 0, init_hello.clone()),
        ("responder", 0, resp_hello),
        ("responder", 1, peers(&[(id_of(3), ipv4("192.0.2.7"), 9000)])),
        ("initiator", 1, peers(&[])),
        ("initiator", 2, ask(&root)),
        ("responder", 2, give(&manifest)),
        ("initiator", 3, reject(6, 10, "shutting down")),
    ];
    let transport = fx["transport"].as_array().unwrap();
    assert_eq!(transport.len(), frames.len());
    let (mut from_i, mut from_r) = (Gcm::new(&k1), Gcm::new(&k2));
    let (mut open_i, mut open_r) = (Gcm::new(&k1), Gcm::new(&k2));
    for (n, ((from, nonce, plain), t)) in frames.iter().zip(transport).enumerate() {
        assert_eq!(t["from"], *from, "transport message {n}");
        assert_eq!(t["nonce"], *nonce, "transport message {n}");
        assert_eq!(hex(plain), t["plaintext"].as_str().unwrap(), "transport message {n}: plaintext");
        let (gcm, opener) = if *from == "initiator" { (&mut from_i, &mut open_i) } else { (&mut from_r, &mut open_r) };
        assert_eq!(gcm.n, *nonce, "transport message {n}: the nonce counts the sender's messages");
        let wire = lp(&gcm.seal(&[], plain));
        assert_eq!(hex(&wire), t["wire"].as_str().unwrap(), "transport message {n}: on the wire");
        assert_eq!(wire.len(), 2 + plain.len() + 16);
        assert_eq!(opener.open(&[], &wire[2..]).as_deref(), Some(&plain[..]), "transport message {n} opens");
    }
    // 2.4 quotes the first of them.
    assert_eq!(
        hex(&lp(&Gcm::new(&k1).seal(&[], &init_hello))),
        "007c530e938b8c8e8ec84cd72b9451af17f20bad61a85794b8409ee4b0e69e4fed56014d5f7384eb968fb584faf8fa5e50b176a3554bb82eb59eec60e2de66458746d0f1683aedbbbef6916ef0e050493602e67d5849fff429122ee5627edcf940cf85217db5b71bb167dda8aeb7011f08b0a838eb267c66ca28dc378902"
    );
    // Nonces do not carry over from the handshake, and the wrong key, nonce or a flipped bit fail.
    let sealed = Gcm::new(&k1).seal(&[], &init_hello);
    assert!(Gcm::new(&k2).open_at(0, &[], &sealed).is_none());
    assert!(Gcm::new(&k1).open_at(1, &[], &sealed).is_none());
    let mut flipped = sealed.clone();
    flipped[10] ^= 1;
    assert!(Gcm::new(&k1).open_at(0, &[], &flipped).is_none());

    // The same handshake through snow's state machine agrees with ours.
    let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
    let mut si = snow::Builder::new(params.clone())
        .local_private_key(&[0x11; 32])
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[0x21; 32])
        .prologue(PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut sr = snow::Builder::new(params)
        .local_private_key(&[0x12; 32])
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&[0x22; 32])
        .prologue(PROLOGUE)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut buf, mut payload) = ([0u8; 128], [0u8; 128]);
    for (n, ours) in [&m1, &m2, &m3].into_iter().enumerate() {
        let (w, rd) = if n == 1 { (&mut sr, &mut si) } else { (&mut si, &mut sr) };
        let len = w.write_message(&[], &mut buf).unwrap();
        assert_eq!(hex(&buf[..len]), hex(&ours[2..]), "snow: handshake message {}", n + 1);
        assert_eq!(rd.read_message(&buf[..len], &mut payload).unwrap(), 0);
    }
    assert_eq!(si.get_handshake_hash(), h);
    assert_eq!(si.dangerously_get_raw_split(), (k1, k2));
    assert_eq!(sr.dangerously_get_raw_split(), (k1, k2));
}
