//! The spec's test vectors (`shared/spec/vectors.json`, copied into `testdata/`), for
//! unit tests.

use std::path::PathBuf;

/// The parsed vectors file.
pub fn vectors() -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("testdata/vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors.json parses")
}

/// The vectors of one group.
pub fn group(name: &str) -> Vec<serde_json::Value> {
    vectors()["groups"][name]["vectors"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("group {name}"))
}

/// Decodes a hex field.
pub fn hex_field(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// Decodes a 32-byte hex field.
pub fn hex32(v: &serde_json::Value) -> [u8; 32] {
    hex_field(v).try_into().expect("32 bytes")
}

#[test]
fn copy_matches_shared_spec() {
    // CI lays shared/ beside the clone; when it is there, our copy must not have drifted.
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
    if let Ok(theirs) = std::fs::read(&shared) {
        let ours = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors.json"),
        )
        .expect("copy");
        assert!(
            ours == theirs,
            "testdata/vectors.json differs from shared/spec/vectors.json"
        );
    }
}

#[test]
fn key_vectors() {
    use crate::crypto::*;
    for v in group("ed25519_keypair") {
        let pair = Ed25519KeyPair::from_seed(&hex32(&v["inputs"]["seed"]));
        assert_eq!(
            pair.public_key().to_vec(),
            hex_field(&v["outputs"]["publicKey"])
        );
        assert_eq!(
            pair.secret_key().to_vec(),
            hex_field(&v["outputs"]["secretKey"])
        );
        assert_eq!(
            discovery_key(&pair.public_key()).to_vec(),
            hex_field(&v["outputs"]["discoveryKey"])
        );
    }
    for v in group("noise_keypair") {
        let pair = NoiseKeyPair::from_seed(&hex32(&v["inputs"]["seed"]));
        assert_eq!(
            pair.public_key().to_vec(),
            hex_field(&v["outputs"]["publicKey"])
        );
        assert_eq!(
            pair.secret_key().to_vec(),
            hex_field(&v["outputs"]["secretKey"])
        );
        assert_eq!(
            discovery_key(&pair.public_key()).to_vec(),
            hex_field(&v["outputs"]["discoveryKey"])
        );
    }
    for v in group("discovery_key") {
        assert_eq!(
            discovery_key(&hex32(&v["inputs"]["key"])).to_vec(),
            hex_field(&v["outputs"]["discoveryKey"])
        );
    }
    for v in group("capability") {
        let key = hex32(&v["inputs"]["key"]);
        let rx: [u8; 32] = hex_field(&v["inputs"]["split"]["rx"])[..32]
            .try_into()
            .expect("32");
        let tx: [u8; 32] = hex_field(&v["inputs"]["split"]["tx"])[..32]
            .try_into()
            .expect("32");
        assert_eq!(
            capability(&key, &rx, &tx).to_vec(),
            hex_field(&v["outputs"]["capability"]),
            "{}",
            v["name"]
        );
        assert_eq!(
            remote_capability(&key, &rx, &tx).to_vec(),
            hex_field(&v["outputs"]["remoteCapability"]),
            "{}",
            v["name"]
        );
    }
}

#[test]
fn dazaar_key_vectors() {
    use crate::crypto::*;
    for v in group("dazaar_keys") {
        let name = v["name"].as_str().expect("name");
        let master = hex32(&v["inputs"]["masterKey"]);
        let input = v["inputs"]["input_utf8"].as_str().expect("input");
        let out = &v["outputs"];
        let seed = out
            .get("derived")
            .or_else(|| out.get("seed"))
            .expect("derived or seed");
        assert_eq!(
            dazaar_derive(&master, input).to_vec(),
            hex_field(seed),
            "{name}"
        );
        if name.starts_with("buyer-key-pair") {
            let pair = buyer_key_pair(&master);
            assert_eq!(
                pair.public_key().to_vec(),
                hex_field(&out["publicKey"]),
                "{name}"
            );
            assert_eq!(
                pair.secret_key().to_vec(),
                hex_field(&out["secretKey"]),
                "{name}"
            );
        } else if name.starts_with("seller-key-pair") {
            let pair = seller_key_pair(&master, &hex32(&v["inputs"]["feedKey"]));
            assert_eq!(
                pair.public_key().to_vec(),
                hex_field(&out["publicKey"]),
                "{name}"
            );
            assert_eq!(
                discovery_key(&pair.public_key()).to_vec(),
                hex_field(&out["discoveryKey"]),
                "{name}"
            );
        } else if name.starts_with("per-buyer") {
            let pair = rekeyed_feed_key_pair(
                &master,
                &hex32(&v["inputs"]["feedKey"]),
                &hex32(&v["inputs"]["buyerKey"]),
            );
            assert_eq!(
                pair.public_key().to_vec(),
                hex_field(&out["publicKey"]),
                "{name}"
            );
            assert_eq!(
                pair.secret_key().to_vec(),
                hex_field(&out["secretKey"]),
                "{name}"
            );
        } else if name.starts_with("deriveHypercoreKeyPair") {
            let pair = hypercore_key_pair(&master, v["inputs"]["id"].as_str().expect("id"));
            assert_eq!(
                pair.public_key().to_vec(),
                hex_field(&out["publicKey"]),
                "{name}"
            );
            assert_eq!(
                pair.secret_key().to_vec(),
                hex_field(&out["secretKey"]),
                "{name}"
            );
        }
    }
}
