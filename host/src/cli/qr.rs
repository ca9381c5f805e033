//! QR codes for the terminal: what `dazaar pay` shows next to a Lightning invoice or a
//! checkout page, so a phone wallet can scan it.

use qrcode::{Color, EcLevel, QrCode};

/// A BOLT 11 invoice as a QR payload. Upper case lets the encoder use the alphanumeric
/// mode (a much smaller code); the `LIGHTNING:` scheme is what wallets expect (BOLT 11
/// is case-insensitive, so the invoice is unchanged).
pub fn lightning_payload(invoice: &str) -> String {
    format!("LIGHTNING:{}", invoice.to_ascii_uppercase())
}

/// The code for `data` as rows of dark (`true`) and light modules, with the four-module
/// quiet zone the standard asks for. `None` if `data` is too long for any QR version.
pub fn modules(data: &str) -> Option<Vec<Vec<bool>>> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    const QUIET: usize = 4;
    let side = width + 2 * QUIET;
    let mut rows = vec![vec![false; side]; side];
    for (i, c) in colors.iter().enumerate() {
        rows[QUIET + i / width][QUIET + i % width] = *c == Color::Dark;
    }
    Some(rows)
}

/// The code drawn with half blocks, two module rows per text line, light modules as
/// white so it scans on dark and light terminals alike.
pub fn render(data: &str) -> Option<String> {
    let rows = modules(data)?;
    // Full white background: the dark modules are spaces on white (ANSI reverse video
    // would depend on the terminal's colours), drawn with the "upper/lower half" blocks.
    let mut out = String::new();
    for pair in rows.chunks(2) {
        let top = &pair[0];
        let bottom = pair.get(1);
        for x in 0..top.len() {
            let t = top[x];
            let b = bottom.is_some_and(|r| r[x]);
            out.push(match (t, b) {
                (false, false) => '\u{2588}', // both light: full block (white)
                (true, false) => '\u{2584}',  // top dark: lower half white
                (false, true) => '\u{2580}',  // bottom dark: upper half white
                (true, true) => ' ',
            });
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a module grid back with an independent QR decoder.
    fn decode(rows: &[Vec<bool>]) -> String {
        // Three pixels per module, dark = 0.
        let scale = 3;
        let side = rows.len() * scale;
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
            if rows[y / scale][x / scale] {
                0
            } else {
                255
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one code found");
        grids[0].decode().expect("decodes").1
    }

    #[test]
    fn invoice_round_trips_through_a_decoder() {
        let invoice = "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpuaztrnwngzn3kdzw5hydlzf03qdgm2hdq27cqv3agm2awhz5se903vruatfhq77w3ls4evs3ch9zw97j25emudupq63nyw24cg27h2rspfj9srp";
        let payload = lightning_payload(invoice);
        let rows = modules(&payload).unwrap();
        assert_eq!(decode(&rows), payload);
        // The text rendering has the module grid's shape.
        let text = render(&payload).unwrap();
        assert_eq!(text.lines().count(), rows.len().div_ceil(2));
        assert!(text.lines().all(|l| l.chars().count() == rows.len()));
    }

    #[test]
    fn url_round_trips_and_oversized_data_is_refused() {
        let url = "https://checkout.stripe.com/c/pay/cs_test_a1B2c3D4e5F6";
        assert_eq!(decode(&modules(url).unwrap()), url);
        assert!(modules(&"x".repeat(8000)).is_none());
    }
}
