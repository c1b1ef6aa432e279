//! Signatures of the messages that must stand alone as evidence: the service report
//! (signed by the residence node that issued it), the verdict on it (signed by her
//! origin) and each node's assessment statement. Each is signed over its own encoding with the `signature` field empty, in a
//! domain of its own, so neither can pass for the other or for a chain head.

use prost::Message;

use crate::identity::{PublicKey, SignKey, SignatureError};
use crate::v1::{AssessmentStatement, ReportVerdict, ServiceReport};

const REPORT_DOMAIN: &str = "ldx.v1.service-report";
const VERDICT_DOMAIN: &str = "ldx.v1.report-verdict";
const STATEMENT_DOMAIN: &str = "ldx.v1.assessment-statement";

/// Sets `statement.signature` to the measuring node's signature.
pub fn sign_statement(statement: &mut AssessmentStatement, key: &SignKey) {
    statement.signature.clear();
    statement.signature = key.sign(STATEMENT_DOMAIN, &statement.encode_to_vec());
}

pub fn verify_statement(statement: &AssessmentStatement, key: &PublicKey) -> Result<(), SignatureError> {
    let unsigned = AssessmentStatement { signature: Vec::new(), ..statement.clone() }.encode_to_vec();
    key.verify(STATEMENT_DOMAIN, &unsigned, &statement.signature)
}

fn unsigned_report(report: &ServiceReport) -> Vec<u8> {
    ServiceReport { signature: Vec::new(), ..report.clone() }.encode_to_vec()
}

fn unsigned_verdict(verdict: &ReportVerdict) -> Vec<u8> {
    ReportVerdict { signature: Vec::new(), ..verdict.clone() }.encode_to_vec()
}

/// Sets `report.signature` to the issuer's signature.
pub fn sign_report(report: &mut ServiceReport, key: &SignKey) {
    report.signature = key.sign(REPORT_DOMAIN, &unsigned_report(report));
}

pub fn verify_report(report: &ServiceReport, key: &PublicKey) -> Result<(), SignatureError> {
    key.verify(REPORT_DOMAIN, &unsigned_report(report), &report.signature)
}

/// Sets `verdict.signature` to the verifier's signature.
pub fn sign_verdict(verdict: &mut ReportVerdict, key: &SignKey) {
    verdict.signature = key.sign(VERDICT_DOMAIN, &unsigned_verdict(verdict));
}

pub fn verify_verdict(verdict: &ReportVerdict, key: &PublicKey) -> Result<(), SignatureError> {
    key.verify(VERDICT_DOMAIN, &unsigned_verdict(verdict), &verdict.signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ServiceReport {
        ServiceReport {
            report_id: "410103007-2026Q1-0102030405ab".into(),
            issuer: "410103007".into(),
            period: "2026Q1".into(),
            issued_on: "2026-01-09".into(),
            photo_digest: vec![7; 32],
            person_key: vec![1; 32],
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_report_verifies_only_with_its_issuers_key_and_unchanged() {
        let (issuer, other) = (SignKey::generate(), SignKey::generate());
        let mut r = report();
        sign_report(&mut r, &issuer);
        verify_report(&r, &issuer.public()).unwrap();
        assert!(verify_report(&r, &other.public()).is_err(), "another node's key");
        let mut changed = r.clone();
        changed.period = "2026Q2".into();
        assert!(verify_report(&changed, &issuer.public()).is_err(), "a changed field");
        let mut unsigned = r.clone();
        unsigned.signature.clear();
        assert!(verify_report(&unsigned, &issuer.public()).is_err(), "no signature");
    }

    #[test]
    fn a_statement_verifies_only_unchanged() {
        let key = SignKey::generate();
        let mut s = AssessmentStatement { period: "2026Q1".into(), node: "411421".into(), ..Default::default() };
        sign_statement(&mut s, &key);
        verify_statement(&s, &key.public()).unwrap();
        s.counterpart = "410103007".into();
        assert!(verify_statement(&s, &key.public()).is_err());
    }

    #[test]
    fn a_report_signature_does_not_pass_as_a_verdict_signature() {
        let key = SignKey::generate();
        let mut verdict = ReportVerdict { report_id: "x".into(), qualified: true, ..Default::default() };
        sign_verdict(&mut verdict, &key);
        verify_verdict(&verdict, &key.public()).unwrap();
        let mut r = report();
        r.signature = key.sign(VERDICT_DOMAIN, &unsigned_report(&r));
        assert!(verify_report(&r, &key.public()).is_err(), "signed in the verdict domain");
    }
}
