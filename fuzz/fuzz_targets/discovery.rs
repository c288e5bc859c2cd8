//! Discovery datagrams from anyone on the LAN: any bytes, decoded and fed
//! to a tracker. Never a panic; a reply is only ever due to a query, to its
//! source, and a decoded packet encodes back to the same bytes.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use peershare_proto::NodeId;
use peershare_proto::discovery::{DiscoveryTracker, Kind, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    let mut tracker = DiscoveryTracker::new(NodeId([1; 32]), Duration::from_secs(15));
    let src: SocketAddr = "192.0.2.7:9000".parse().unwrap();
    // The same bytes as one datagram, then split into many.
    let mut inputs = vec![data];
    inputs.extend(data.chunks(48));
    for (n, bytes) in inputs.into_iter().enumerate() {
        let reply = tracker.handle_datagram(src, bytes, Duration::from_millis(n as u64));
        if let Some(to) = reply {
            assert_eq!(to, src);
            let p = Packet::decode(bytes).expect("only a valid packet is answered");
            assert_eq!(p.kind, Kind::Query);
        }
    }
});
