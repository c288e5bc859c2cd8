//! Frames from a peer: any bytes, fed to the decoder as a client's and as a
//! server's input. It must never panic, never take more than the frame it
//! answers for, and what it decodes must encode back to a frame that
//! decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peershare_proto::wire::{MAX_FRAME_LEN, MAX_REQUEST_FRAME_LEN, decode_frame};

fuzz_target!(|data: &[u8]| {
    for max in [MAX_REQUEST_FRAME_LEN, MAX_FRAME_LEN] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(msg)) = decode_frame(&mut buf, max) {
            let frame = msg.to_frame().expect("a decoded message encodes");
            let mut again = frame.clone();
            let back = decode_frame(&mut again, MAX_FRAME_LEN)
                .expect("its encoding decodes")
                .expect("whole");
            assert_eq!(back, msg);
            assert!(again.is_empty());
        }
    }
});
