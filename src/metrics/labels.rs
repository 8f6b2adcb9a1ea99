//! Metric labels with hand-written encodings or hashes: Mono's status as a number that encodes
//! empty for "no answer", and the two label sets every request looks up, hashed as one word.

/// Mono's HTTP status as a label, empty for 0 (no answer came); a number, so counting a call
/// allocates nothing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) struct UpstreamStatus(pub(super) u16);

impl prometheus_client::encoding::EncodeLabelValue for UpstreamStatus {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            0 => "".encode(encoder),
            code => code.encode(encoder),
        }
    }
}

/// The two label sets looked up on every request are hashed as one word: an FNV-1a pass over
/// their (short, static, never client-chosen) values, which costs half of feeding each field
/// through the map's SipHash.
fn label_hash(fields: &[&str], number: u16) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ u64::from(number);
    for field in fields {
        for &b in field.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h = (h ^ 0xff).wrapping_mul(PRIME);
    }
    h
}

impl std::hash::Hash for super::RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(label_hash(
            &[self.class, self.cache, self.route, self.client],
            self.status,
        ));
    }
}

impl std::hash::Hash for super::ClassRouteLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(label_hash(&[self.class, self.route], 0));
    }
}
