//! Which URLs we will ever fetch on behalf of an SNS message: the signing certificate URL and
//! the SubscribeURL. The rule is a whitelist written out by hand rather than a general URL
//! parser, because general parsers normalise (backslashes, percent-encoded hosts, tabs) and
//! every normalisation is a way to make a check and a fetch disagree.

use crate::model::TopicArn;

/// Why a URL was refused. Each is a 403 and is logged with its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedUrl {
    #[error("not https")]
    NotHttps,
    #[error("host is not an SNS host")]
    NotSnsHost,
    #[error("host region does not match the TopicArn region")]
    RegionMismatch,
    #[error("unknown partition in TopicArn")]
    UnknownPartition,
    #[error("TopicArn is not an SNS topic ARN")]
    BadTopicArn,
    #[error("userinfo, port, query or fragment not allowed")]
    ExtraParts,
    #[error("path is not an SNS signing certificate")]
    BadPath,
    #[error("not a ConfirmSubscription request")]
    NotConfirmSubscription,
}

/// The DNS suffix of each AWS partition, from the partition name in an ARN.
/// aws-us-gov shares amazonaws.com; the ISO partitions are listed so that
/// operators in them need no configuration.
pub fn partition_domain(partition: &str) -> Option<&'static str> {
    Some(match partition {
        "aws" | "aws-us-gov" => "amazonaws.com",
        "aws-cn" => "amazonaws.com.cn",
        "aws-iso" => "c2s.ic.gov",
        "aws-iso-b" => "sc2s.sgov.gov",
        "aws-iso-e" => "cloud.adc-e.uk",
        "aws-iso-f" => "csp.hci.ic.gov",
        "aws-eusc" => "amazonaws.eu",
        _ => return None,
    })
}

/// `us-east-1`, `cn-north-1`, `us-gov-west-1`, `eusc-de-east-1`: letters, dash-separated
/// words, then a number. Rejects `s3`, `s3-external`, empty and dotted labels.
pub fn is_region_code(s: &str) -> bool {
    let Some(first) = s.split('-').next() else { return false };
    if !(2..=4).contains(&first.len()) || !first.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    // The rest: one or more lowercase words, then the number (no Vec: runs per request).
    let Some(last) = s.rsplit('-').next().filter(|_| s.contains('-')) else { return false };
    let middle = &s[first.len()..s.len() - last.len()];
    let middle = middle.strip_prefix('-').and_then(|m| m.strip_suffix('-'));
    let Some(middle) = middle.filter(|m| !m.is_empty()) else { return false };
    middle.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `https://HOST[:443]/REST` and checks the host is `sns.<region of topic>.<domain>`.
/// Returns REST (path and query, starting with `/`).
fn sns_host_rest<'u>(url: &'u str, topic_arn: &str) -> Result<&'u str, UntrustedUrl> {
    let rest = url.strip_prefix("https://").ok_or(UntrustedUrl::NotHttps)?;
    let slash = rest.find('/').ok_or(UntrustedUrl::BadPath)?;
    let (authority, path) = rest.split_at(slash);
    let host = match authority.strip_suffix(":443") {
        Some(h) => h,
        None if authority.contains(':') || authority.contains('@') => return Err(UntrustedUrl::ExtraParts),
        None => authority,
    };
    if host.contains('@') || host.contains(':') {
        return Err(UntrustedUrl::ExtraParts);
    }
    let topic = TopicArn::parse(topic_arn).ok_or(UntrustedUrl::BadTopicArn)?;
    let domain = partition_domain(topic.partition).ok_or(UntrustedUrl::UnknownPartition)?;
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| h.strip_suffix(domain))
        .and_then(|h| h.strip_suffix('.'))
        .ok_or(UntrustedUrl::NotSnsHost)?;
    if !is_region_code(region) {
        return Err(UntrustedUrl::NotSnsHost);
    }
    if region != topic.region {
        return Err(UntrustedUrl::RegionMismatch);
    }
    Ok(path)
}

/// `https://sns.<region>.<domain>/SimpleNotificationService-<32 hex>.pem`, nothing more.
pub fn check_signing_cert_url(url: &str, topic_arn: &str) -> Result<(), UntrustedUrl> {
    let path = sns_host_rest(url, topic_arn)?;
    if path.contains(['?', '#']) {
        return Err(UntrustedUrl::ExtraParts);
    }
    let hex = path
        .strip_prefix("/SimpleNotificationService-")
        .and_then(|p| p.strip_suffix(".pem"))
        .ok_or(UntrustedUrl::BadPath)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UntrustedUrl::BadPath);
    }
    Ok(())
}

/// `https://sns.<region>.<domain>/?Action=ConfirmSubscription&...`, with no fragment.
pub fn check_subscribe_url(url: &str, topic_arn: &str) -> Result<(), UntrustedUrl> {
    let path = sns_host_rest(url, topic_arn)?;
    if path.contains('#') {
        return Err(UntrustedUrl::ExtraParts);
    }
    if !path.starts_with("/?Action=ConfirmSubscription&") {
        return Err(UntrustedUrl::NotConfirmSubscription);
    }
    Ok(())
}

/// Operator-declared URL prefixes for local SNS emulators (`--sns-dev-url-prefix`).
/// A prefix always ends at a path boundary so `http://127.0.0.1:4566` cannot
/// also admit `http://127.0.0.1:45660`.
#[derive(Debug, Clone, Default)]
pub struct DevPrefixes(Vec<String>);

impl DevPrefixes {
    pub fn new(prefixes: &[String]) -> DevPrefixes {
        DevPrefixes(prefixes.iter().map(|p| if p.ends_with('/') { p.clone() } else { format!("{p}/") }).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, url: &str) -> bool {
        !url.contains('@') && self.0.iter().any(|p| url.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sns:us-east-1:123456789012:alarms";
    const GOOD: &str =
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem";
    const PEM: &str = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem";

    #[test]
    fn accepts_real_shapes() {
        assert_eq!(check_signing_cert_url(GOOD, ARN), Ok(()));
        let with_port = format!("https://sns.us-east-1.amazonaws.com:443/{PEM}");
        assert_eq!(check_signing_cert_url(&with_port, ARN), Ok(()));
        let cn = format!("https://sns.cn-north-1.amazonaws.com.cn/{PEM}");
        assert_eq!(check_signing_cert_url(&cn, "arn:aws-cn:sns:cn-north-1:1:t"), Ok(()));
        let gov = format!("https://sns.us-gov-west-1.amazonaws.com/{PEM}");
        assert_eq!(check_signing_cert_url(&gov, "arn:aws-us-gov:sns:us-gov-west-1:1:t"), Ok(()));
    }

    #[test]
    fn refuses_tricks() {
        let cases: &[(&str, UntrustedUrl)] = &[
            ("http://sns.us-east-1.amazonaws.com/X.pem", UntrustedUrl::NotHttps),
            ("HTTPS://sns.us-east-1.amazonaws.com/X.pem", UntrustedUrl::NotHttps),
            ("https://sns.us-east-1.amazonaws.com.evil.com/PEM", UntrustedUrl::NotSnsHost),
            ("https://evil.com/sns.us-east-1.amazonaws.com/PEM", UntrustedUrl::NotSnsHost),
            ("https://user@sns.us-east-1.amazonaws.com/PEM", UntrustedUrl::ExtraParts),
            ("https://sns.us-east-1.amazonaws.com@evil.com/PEM", UntrustedUrl::ExtraParts),
            ("https://sns.us-east-1.amazonaws.com:8443/PEM", UntrustedUrl::ExtraParts),
            ("https://sns.us-east-1.amazonaws.com:443:443/PEM", UntrustedUrl::ExtraParts),
            ("https://54.239.28.85/PEM", UntrustedUrl::NotSnsHost),
            ("https://[::1]/PEM", UntrustedUrl::ExtraParts),
            ("https://sns.s3.amazonaws.com/PEM", UntrustedUrl::NotSnsHost),
            ("https://sns.us-west-2.amazonaws.com/PEM", UntrustedUrl::RegionMismatch),
            ("https://sns.cn-north-1.amazonaws.com.cn/PEM", UntrustedUrl::NotSnsHost),
            ("https://sns.us-east-1.amazonaws.com/PEM?x=1", UntrustedUrl::ExtraParts),
            ("https://sns.us-east-1.amazonaws.com/PEM#f", UntrustedUrl::ExtraParts),
            ("https://sns.us-east-1.amazonaws.com/cert.txt", UntrustedUrl::BadPath),
            ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem", UntrustedUrl::BadPath),
            ("https://sns.us-east-1.amazonaws.com/a/PEM", UntrustedUrl::BadPath),
            ("https://sns.us-east-1.amazonaws.com", UntrustedUrl::BadPath),
            ("https://sns..amazonaws.com/PEM", UntrustedUrl::NotSnsHost),
            ("https://sns.US-EAST-1.amazonaws.com/PEM", UntrustedUrl::NotSnsHost),
        ];
        for (url, want) in cases {
            let url = url.replace("PEM", PEM);
            assert_eq!(check_signing_cert_url(&url, ARN), Err(want.clone()), "{url}");
        }
        // A presigned SNS API call on a real SNS host returns attacker-chosen XML.
        let api = "https://sns.us-east-1.amazonaws.com/?Action=GetEndpointAttributes&X-Amz-Signature=1";
        assert!(check_signing_cert_url(api, ARN).is_err());
        assert_eq!(check_signing_cert_url(GOOD, "arn:bogus:sns:us-east-1:1:t"), Err(UntrustedUrl::UnknownPartition));
        assert_eq!(check_signing_cert_url(GOOD, "not-an-arn"), Err(UntrustedUrl::BadTopicArn));
    }

    #[test]
    fn subscribe_urls() {
        let ok = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=y";
        assert_eq!(check_subscribe_url(ok, ARN), Ok(()));
        let other = "https://sns.us-east-1.amazonaws.com/?Action=Publish&TopicArn=x";
        assert_eq!(check_subscribe_url(other, ARN), Err(UntrustedUrl::NotConfirmSubscription));
        let evil = "https://evil.example/?Action=ConfirmSubscription&TopicArn=x";
        assert_eq!(check_subscribe_url(evil, ARN), Err(UntrustedUrl::NotSnsHost));
    }

    #[test]
    fn region_codes() {
        for ok in ["us-east-1", "cn-north-1", "us-gov-west-1", "ap-southeast-2", "eusc-de-east-1"] {
            assert!(is_region_code(ok), "{ok}");
        }
        for bad in ["s3", "us-east", "us--1", "-east-1", "us-east-123", "US-east-1", "us-east-1.", ""] {
            assert!(!is_region_code(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// The allocation-free check answers as the one it replaced (which collected the
        /// words into a Vec) on any dash-separated text.
        #[test]
        fn region_code_check_matches_the_word_list_reading(s in "[a-zA-Z0-9.-]{0,14}") {
            let old = {
                let mut parts = s.split('-');
                let first = parts.next().unwrap_or_default();
                let rest: Vec<&str> = parts.collect();
                (2..=4).contains(&first.len())
                    && first.bytes().all(|b| b.is_ascii_lowercase())
                    && rest.split_last().is_some_and(|(last, middle)| {
                        !middle.is_empty()
                            && middle.iter().all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
                            && (1..=2).contains(&last.len())
                            && last.bytes().all(|b| b.is_ascii_digit())
                    })
            };
            proptest::prop_assert_eq!(is_region_code(&s), old, "{}", s);
        }

        #[test]
        fn region_shaped_text_matches_too(s in "[a-z]{1,5}(-[a-z]{0,4}){0,3}-[0-9]{0,3}") {
            let words: Vec<&str> = s.split('-').collect();
            let (last, middle) = words.split_last().unwrap();
            let old = (2..=4).contains(&words[0].len())
                && middle.len() > 1
                && middle[1..].iter().all(|w| !w.is_empty())
                && (1..=2).contains(&last.len());
            proptest::prop_assert_eq!(is_region_code(&s), old, "{}", s);
        }
    }

    #[test]
    fn dev_prefixes_end_at_a_path_boundary() {
        let p = DevPrefixes::new(&["http://127.0.0.1:4566".to_string()]);
        assert!(p.matches("http://127.0.0.1:4566/cert.pem"));
        assert!(!p.matches("http://127.0.0.1:45660/cert.pem"));
        assert!(!p.matches("https://sns.us-east-1.amazonaws.com/x.pem"));
    }
}
