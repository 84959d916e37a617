//! A node's identity: an Ed25519 key pair whose public key is the node id,
//! and the HELLO signature that binds that id to one Noise session
//! (docs/PROTOCOL.md 2.2 and 4.4). Kept on disk as 32 secret bytes in a file
//! only its owner may read.

use crate::hash::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a HELLO signature covers before the handshake hash.
pub const HELLO_CONTEXT: &[u8; 11] = b"pex/2 hello";
/// What a room MESSAGE signature covers before the room, the id and the payload.
pub const ROOM_CONTEXT: &[u8; 18] = b"pex/2 room message";
/// What a room PRESENCE signature signs before the room, sequence and state (docs/PROTOCOL.md 4.16).
pub const PRESENCE_CONTEXT: &[u8; 19] = b"pex/2 room presence";
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 key pair; its public key is the node id.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.node_id().short())
    }
}

impl Identity {
    /// A new random identity, from the system's CSPRNG.
    pub fn generate() -> Identity {
        Identity::from_secret(random_secret())
    }

    /// The identity whose 32-byte Ed25519 secret key is `secret` (fixtures, the identity file).
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        Identity { key: SigningKey::from_bytes(&secret) }
    }

    /// The node id: the Ed25519 public key.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The signature a HELLO carries on the connection whose Noise handshake hash is `handshake_hash`.
    pub fn sign_hello(&self, handshake_hash: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(&hello_message(handshake_hash)).to_bytes()
    }

    /// The signature a room MESSAGE from this node carries (docs/PROTOCOL.md 4.14).
    pub fn sign_room_message(&self, room: &[u8; 32], id: &[u8; 16], payload: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(&room_message(room, id, payload)).to_bytes()
    }

    /// The signature a room PRESENCE from this node carries (docs/PROTOCOL.md 4.16).
    pub fn sign_presence(&self, room: &[u8; 32], seq: u64, state: u8) -> [u8; SIGNATURE_LEN] {
        self.key.sign(&presence_message(room, seq, state)).to_bytes()
    }

    /// Reads the identity kept at `path`, creating it (mode 0600) on first use.
    /// A file of the wrong size or readable by others is an error, not replaced.
    pub fn load_or_create(path: &Path) -> io::Result<Identity> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(io::Error::other(format!(
                        "identity file {} is readable by others (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    io::Error::other(format!(
                        "identity file {} is {} bytes, not 32: not a pex identity",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(Identity::from_secret(secret))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = Identity::generate();
                // Written under a temporary name and renamed: a crash never leaves half a key.
                let tmp = path.with_extension("tmp");
                let mut f =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                f.write_all(&id.key.to_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }
}

/// 32 bytes from the system's CSPRNG: a new secret key.
pub fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).is_err() {
        // No safe way on without randomness: a predictable key would be worse than stopping.
        #[allow(clippy::panic)]
        {
            panic!("the system random number generator failed");
        }
    }
    secret
}

/// The bytes a HELLO signature signs: [`HELLO_CONTEXT`] then the handshake hash.
fn hello_message(handshake_hash: &[u8; 32]) -> [u8; 43] {
    let mut m = [0u8; 43];
    m[..11].copy_from_slice(HELLO_CONTEXT);
    m[11..].copy_from_slice(handshake_hash);
    m
}

/// The bytes a room MESSAGE signature signs: [`ROOM_CONTEXT`], room, id, payload.
fn room_message(room: &[u8; 32], id: &[u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROOM_CONTEXT.len() + 48 + payload.len());
    m.extend_from_slice(ROOM_CONTEXT);
    m.extend_from_slice(room);
    m.extend_from_slice(id);
    m.extend_from_slice(payload);
    m
}

/// Whether `signature` is `origin`'s signature of a room MESSAGE with this
/// room, id and payload (strict verification, as for HELLO).
pub fn verify_room_message(
    origin: &NodeId,
    room: &[u8; 32],
    id: &[u8; 16],
    payload: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&origin.0) else {
        return false;
    };
    key.verify_strict(&room_message(room, id, payload), &Signature::from_bytes(signature)).is_ok()
}

/// The bytes a PRESENCE signature signs: [`PRESENCE_CONTEXT`], room, seq (big-endian), state.
fn presence_message(room: &[u8; 32], seq: u64, state: u8) -> [u8; 60] {
    let mut m = [0u8; 60];
    m[..19].copy_from_slice(PRESENCE_CONTEXT);
    m[19..51].copy_from_slice(room);
    m[51..59].copy_from_slice(&seq.to_be_bytes());
    m[59] = state;
    m
}

/// Whether `signature` is `origin`'s signature of a room PRESENCE with this
/// room, sequence and state (strict verification, as for HELLO).
pub fn verify_presence(origin: &NodeId, room: &[u8; 32], seq: u64, state: u8, signature: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&origin.0) else {
        return false;
    };
    key.verify_strict(&presence_message(room, seq, state), &Signature::from_bytes(signature)).is_ok()
}

/// Whether `signature` is `node_id`'s HELLO signature for this handshake hash.
/// Strict verification: no malleable or small-order keys.
pub fn verify_hello(node_id: &NodeId, handshake_hash: &[u8; 32], signature: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&node_id.0) else {
        return false;
    };
    key.verify_strict(&hello_message(handshake_hash), &Signature::from_bytes(signature)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_message_signature_covers_room_id_and_payload_and_its_origin() {
        let (a, b) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]));
        let (room, id) = ([3u8; 32], [4u8; 16]);
        let sig = a.sign_room_message(&room, &id, b"hi");
        assert!(verify_room_message(&a.node_id(), &room, &id, b"hi", &sig));
        assert!(!verify_room_message(&b.node_id(), &room, &id, b"hi", &sig), "another origin");
        assert!(!verify_room_message(&a.node_id(), &[5; 32], &id, b"hi", &sig), "another room");
        assert!(!verify_room_message(&a.node_id(), &room, &[6; 16], b"hi", &sig), "another id");
        assert!(!verify_room_message(&a.node_id(), &room, &id, b"ho", &sig), "another payload");
        assert!(!verify_room_message(&NodeId([0; 32]), &room, &id, b"hi", &sig), "not a key");
        // Not interchangeable with a HELLO signature.
        assert!(!verify_hello(&a.node_id(), &[7; 32], &sig));
    }

    #[test]
    fn a_hello_signature_verifies_only_for_its_id_and_handshake() {
        let (a, b) = (Identity::from_secret([1; 32]), Identity::from_secret([2; 32]));
        let hh = [7u8; 32];
        let sig = a.sign_hello(&hh);
        assert!(verify_hello(&a.node_id(), &hh, &sig));
        assert!(!verify_hello(&b.node_id(), &hh, &sig), "another id");
        assert!(!verify_hello(&a.node_id(), &[8u8; 32], &sig), "another connection");
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!verify_hello(&a.node_id(), &hh, &bad), "a flipped bit");
        assert!(!verify_hello(&NodeId([0xFF; 32]), &hh, &sig), "not a curve point");
    }

    #[test]
    fn new_identities_differ_and_debug_output_shows_no_secret() {
        let (a, b) = (Identity::generate(), Identity::generate());
        assert_ne!(a.node_id(), b.node_id(), "the CSPRNG gave the same key twice");
        let shown = format!("{a:?}");
        assert_eq!(shown, format!("Identity({})", a.node_id().short()));
        let secret: String = a.key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&secret[..16]));
    }

    #[test]
    fn an_identity_that_cannot_be_read_is_an_error_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        std::fs::create_dir(&path).unwrap();
        assert!(Identity::load_or_create(&path).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a key was written beside it");
    }

    #[test]
    fn the_identity_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let a = Identity::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Identity::load_or_create(&path).unwrap_err().to_string().contains("readable by others"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(Identity::load_or_create(&path).unwrap_err().to_string().contains("not 32"));
    }
}
