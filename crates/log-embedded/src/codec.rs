//! The binary encoding of an entry's headers in the `entries.headers` column.
//!
//! Layout: for each header, in order, `u32` little-endian name length, the name's UTF-8 bytes,
//! `u32` little-endian value length, the value bytes. No headers is stored as SQL NULL, not as
//! an empty blob. Decoding never panics on a corrupt blob; it reports it.

/// Encodes headers; `None` when there are none.
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    if headers.is_empty() {
        return None;
    }
    let len = headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (name, value) in headers {
        put(&mut out, name.as_bytes());
        put(&mut out, value);
    }
    Some(out)
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // A header over 4 GiB cannot reach here: SQLite's blob limit is far below that.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes what [`encode_headers`] wrote.
pub(crate) fn decode_headers(blob: Option<&[u8]>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let Some(mut rest) = blob else {
        return Ok(Vec::new());
    };
    let mut headers = Vec::new();
    while !rest.is_empty() {
        let name = take(&mut rest)?;
        let name =
            String::from_utf8(name.to_vec()).map_err(|_| "header name is not utf-8".to_string())?;
        let value = take(&mut rest)?.to_vec();
        headers.push((name, value));
    }
    Ok(headers)
}

fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
        return Err("truncated header length".to_string());
    };
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return Err(format!(
            "header of {len} bytes but only {} left",
            tail.len()
        ));
    }
    let (bytes, tail) = tail.split_at(len);
    *rest = tail;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let headers = vec![
            ("tenant".to_string(), b"a".to_vec()),
            ("dup".to_string(), Vec::new()),
            ("dup".to_string(), vec![0, 255, 1]),
            (String::new(), b"x".to_vec()),
        ];
        let blob = encode_headers(&headers).unwrap();
        assert_eq!(decode_headers(Some(&blob)).unwrap(), headers);
    }

    #[test]
    fn no_headers_is_null() {
        assert_eq!(encode_headers(&[]), None);
        assert_eq!(decode_headers(None).unwrap(), Vec::new());
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        assert!(decode_headers(Some(&[1, 0])).is_err());
        assert!(decode_headers(Some(&[5, 0, 0, 0, b'a'])).is_err());
        assert!(decode_headers(Some(&[1, 0, 0, 0, 0xff, 0, 0, 0, 0])).is_err());
    }
}
