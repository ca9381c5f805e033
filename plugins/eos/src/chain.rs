//! Antelope (EOS) values read from history JSON: asset quantities, block times, and
//! `transfer` actions from the two history APIs (v1 `history_plugin`, Hyperion v2).
//!
//! This is the boundary where chain JSON becomes typed values; an action that does not
//! read cleanly counts for nothing.

use serde_json::Value;

/// An asset amount: `"1.0000 EOS"` is 10000 units of precision 4, symbol `EOS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Amount in the smallest unit.
    pub units: i64,
    /// Digits after the point.
    pub precision: u32,
    /// Symbol code (1–7 uppercase letters).
    pub symbol: String,
}

impl Asset {
    /// Parses `"<amount> <SYMBOL>"` as nodeos prints assets.
    pub fn parse(text: &str) -> Option<Asset> {
        let (amount, symbol) = text.trim().split_once(' ')?;
        if symbol.is_empty() || symbol.len() > 7 || !symbol.chars().all(|c| c.is_ascii_uppercase())
        {
            return None;
        }
        let (units, precision) = parse_decimal(amount)?;
        Some(Asset {
            units,
            precision,
            symbol: symbol.to_owned(),
        })
    }

    /// The amount in whole tokens.
    pub fn amount(&self) -> f64 {
        self.units as f64 / 10f64.powi(self.precision as i32)
    }

    /// Formats `amount` (decimal text, whole tokens) as an asset of `precision`.
    pub fn format(amount: &str, precision: u32, symbol: &str) -> Option<String> {
        let (units, p) = parse_decimal(amount)?;
        if p > precision || units <= 0 {
            return None;
        }
        let units = units.checked_mul(10i64.checked_pow(precision - p)?)?;
        let scale = 10i64.checked_pow(precision)?;
        let int = units / scale;
        let frac = units % scale;
        Some(if precision == 0 {
            format!("{int} {symbol}")
        } else {
            format!("{int}.{frac:0width$} {symbol}", width = precision as usize)
        })
    }
}

/// `"12.3400"` → (123400, 4). Unsigned; at most 18 digits in all.
fn parse_decimal(text: &str) -> Option<(i64, u32)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || int.len() + frac.len() > 18
        || text.ends_with('.')
    {
        return None;
    }
    let units: i64 = format!("{int}{frac}").parse().ok()?;
    Some((units, u32::try_from(frac.len()).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a block time, `2019-04-01T12:00:00.500` (UTC, as nodeos writes it) or with a
/// trailing `Z`, to ms since the Unix epoch.
pub fn parse_block_time(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches('Z');
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    // Years past 9999 would overflow the day and millisecond arithmetic below.
    if d.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
    {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
    );
    // Negative fields parse as i64 too; they would overflow the sum below.
    if h.next().is_some()
        || !(0..=23).contains(&hh)
        || !(0..=59).contains(&mm)
        || !(0..=60).contains(&ss)
    {
        return None;
    }
    if frac.is_empty() || frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = format!("{:0<3}", frac).get(..3)?.parse().ok()?;
    let secs = days_from_civil(y, mo, da) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs.checked_mul(1000)?.checked_add(ms)?).ok()
}

/// One token transfer found in an account's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Dedupe key: the global action sequence (or trx id and position when absent).
    pub id: String,
    /// The contract that ran the action (`eosio.token`).
    pub contract: String,
    /// `from`.
    pub from: String,
    /// `to`.
    pub to: String,
    /// `quantity`.
    pub quantity: Asset,
    /// `memo`.
    pub memo: String,
    /// Block time, ms since the epoch.
    pub time_ms: u64,
    /// Block number.
    pub block_num: u64,
}

fn transfer_from(
    id: String,
    contract: &Value,
    name: &Value,
    data: &Value,
    time: &Value,
    block: &Value,
) -> Option<Transfer> {
    if name.as_str()? != "transfer" {
        return None;
    }
    Some(Transfer {
        id,
        contract: contract.as_str()?.to_owned(),
        from: data.get("from")?.as_str()?.to_owned(),
        to: data.get("to")?.as_str()?.to_owned(),
        quantity: Asset::parse(data.get("quantity")?.as_str()?)?,
        memo: data.get("memo")?.as_str()?.to_owned(),
        time_ms: parse_block_time(time.as_str()?)?,
        block_num: block.as_u64()?,
    })
}

fn seq(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Reads one entry of v1 `get_actions` `actions[]`: (account_action_seq, transfer if it
/// is one).
pub fn read_v1(entry: &Value) -> Option<(u64, Option<Transfer>)> {
    let account_seq = entry.get("account_action_seq")?.as_u64()?;
    let trace = entry.get("action_trace")?;
    let act = trace.get("act")?;
    let id = seq(entry.get("global_action_seq"))
        .or_else(|| seq(trace.get("receipt").and_then(|r| r.get("global_sequence"))))
        .unwrap_or_else(|| format!("acct-{account_seq}"));
    let t = transfer_from(
        id,
        act.get("account")?,
        act.get("name")?,
        act.get("data")?,
        entry.get("block_time")?,
        entry.get("block_num")?,
    );
    Some((account_seq, t))
}

/// Reads one entry of Hyperion v2 `get_actions` `actions[]`.
pub fn read_v2(entry: &Value) -> Option<Transfer> {
    let act = entry.get("act")?;
    let id = seq(entry.get("global_sequence")).or_else(|| {
        Some(format!(
            "{}-{}",
            entry.get("trx_id")?.as_str()?,
            seq(entry.get("action_ordinal")).unwrap_or_default()
        ))
    })?;
    let time = entry.get("@timestamp").or_else(|| entry.get("timestamp"))?;
    transfer_from(
        id,
        act.get("account")?,
        act.get("name")?,
        act.get("data")?,
        time,
        entry.get("block_num")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assets() {
        let a = Asset::parse("1.0000 EOS").unwrap();
        assert_eq!((a.units, a.precision, a.symbol.as_str()), (10000, 4, "EOS"));
        assert!((a.amount() - 1.0).abs() < 1e-12);
        assert_eq!(Asset::parse("12 WAX").unwrap().precision, 0);
        for bad in [
            "1.0000",
            "1.0000 eos",
            "-1.0000 EOS",
            "1. EOS",
            " EOS",
            "1.0000 EOSEOSEOS",
        ] {
            assert!(Asset::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Asset::format("1", 4, "EOS").as_deref(), Some("1.0000 EOS"));
        assert_eq!(
            Asset::format("0.25", 4, "EOS").as_deref(),
            Some("0.2500 EOS")
        );
        assert_eq!(Asset::format("3", 0, "X").as_deref(), Some("3 X"));
        assert!(Asset::format("0.00001", 4, "EOS").is_none());
        assert!(Asset::format("0", 4, "EOS").is_none());
    }

    #[test]
    fn times() {
        assert_eq!(parse_block_time("1970-01-01T00:00:00.000"), Some(0));
        assert_eq!(
            parse_block_time("2019-04-01T12:00:00.500"),
            Some(1_554_120_000_500)
        );
        assert_eq!(
            parse_block_time("2019-04-01T12:00:00.5Z"),
            Some(1_554_120_000_500)
        );
        assert_eq!(
            parse_block_time("2024-02-29T00:00:00"),
            Some(1_709_164_800_000)
        );
        assert!(parse_block_time("2019-13-01T00:00:00.000").is_none());
        assert!(parse_block_time("yesterday").is_none());
    }

    #[test]
    fn actions() {
        let v1 = json!({"global_action_seq": 99, "account_action_seq": 3, "block_num": 10,
            "block_time": "2019-04-01T12:00:00.000",
            "action_trace": {"act": {"account": "eosio.token", "name": "transfer",
                "data": {"from": "alice", "to": "bob", "quantity": "1.0000 EOS", "memo": "m"}}}});
        let (s, t) = read_v1(&v1).unwrap();
        assert_eq!(s, 3);
        let t = t.unwrap();
        assert_eq!(
            (t.id.as_str(), t.to.as_str(), t.block_num),
            ("99", "bob", 10)
        );
        let v2 = json!({"@timestamp": "2019-04-01T12:00:00.000", "block_num": 10,
            "global_sequence": 99, "act": {"account": "eosio.token", "name": "transfer",
            "data": {"from": "alice", "to": "bob", "amount": 1, "symbol": "EOS",
                     "quantity": "1.0000 EOS", "memo": "m"}}});
        assert_eq!(read_v2(&v2), Some(t));
        let not_transfer = json!({"@timestamp": "2019-04-01T12:00:00.000", "block_num": 1,
            "global_sequence": 1, "act": {"account": "eosio", "name": "buyram", "data": {}}});
        assert!(read_v2(&not_transfer).is_none());
    }
}
