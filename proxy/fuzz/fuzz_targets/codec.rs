//! Arbitrary bytes through every codec entry point: the first-packet parser,
//! the streaming frame scanner (fed in two chunks at an arbitrary split),
//! and the ErrorResponse field readers. None may panic; the scanner must
//! report the same frames whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgshift_proxy::codec::{self, Scanner};

fn frames(data: &[u8], split: usize) -> Result<Vec<(u8, u32, Vec<u8>)>, codec::ProtocolError> {
    let mut s = Scanner::new(1 << 20);
    let mut out = Vec::new();
    let (a, b) = data.split_at(split.min(data.len()));
    s.feed(a, |f| out.push((f.tag, f.len, f.head.to_vec())))?;
    s.feed(b, |f| out.push((f.tag, f.len, f.head.to_vec())))?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((codec::FirstPacket::Startup(s), used))) = codec::parse_first_packet(data) {
        // What parses re-encodes to the same bytes.
        let mut again = Vec::new();
        s.encode(&mut again);
        assert_eq!(&again[..], &data[..used]);
    }
    let split = data.first().copied().unwrap_or(0) as usize;
    let whole = frames(data, data.len());
    let parts = frames(data, split);
    if let (Ok(w), Ok(p)) = (&whole, &parts) {
        assert_eq!(w, p);
    }
    let _ = codec::error_code(data);
    let _ = codec::error_severity(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let mut args = codec::split_options(text);
        let _ = codec::take_option_setting(&mut args, "pgshift.version");
        let _ = codec::join_options(&args);
    }
});
