//! Any bytes as a data directory's MANIFEST: a typed error or a manifest, never a panic, and a
//! manifest that decodes encodes to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tradeshard_engine::Manifest;

fuzz_target!(|bytes: &[u8]| {
    let path = std::path::Path::new("MANIFEST");
    let Ok(manifest) = Manifest::decode(path, bytes) else { return };
    assert!(manifest.physical_shards >= 1 && manifest.physical_shards <= manifest.logical_shards);
    assert_eq!(Manifest::decode(path, manifest.encode().as_bytes()).expect("re-encoded decodes"), manifest);
});
