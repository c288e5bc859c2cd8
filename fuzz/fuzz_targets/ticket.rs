//! Tickets pasted by a user: any text. Never a panic; a ticket that parses
//! prints back to a ticket that parses to the same value, and its name gives
//! a safe local file name or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peershare_proto::Ticket;
use peershare_proto::ticket::safe_file_name;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = text.parse::<Ticket>() {
        let again: Ticket = t.to_string().parse().expect("a printed ticket parses");
        assert_eq!(again, t);
        if let Ok(name) = safe_file_name(&t.name) {
            assert!(!name.is_empty() && !name.contains('/') && !name.contains('\0'));
            assert!(name != "." && name != "..");
        }
    }
});
