//! Synthetic people for demos, tests and benchmarks: valid-looking resident IDs (correct
//! check digit, real origin county, plausible birth date) and names built from common
//! characters. None of it describes a real person.

use chrono::NaiveDate;
use ldx_node::domain::id::with_check_digit;
use ldx_proto::v1 as pb;

const SURNAMES: [&str; 16] =
    ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林"];
const GIVEN: [&str; 16] =
    ["芳", "娜", "敏", "静", "丽", "艳", "秀英", "桂英", "玉兰", "霞", "婷", "雪", "慧", "红梅", "晓燕", "春花"];
const STREETS: [&str; 8] = ["大学路", "航海路", "嵩山路", "京广路", "建设路", "淮河路", "长江路", "兴华街"];

/// One synthetic person, born in `origin` county.
#[derive(Debug, Clone)]
pub struct Person {
    pub id_number: String,
    pub name: String,
    pub phone: String,
    pub address: String,
    pub origin: String,
}

/// The `n`th synthetic woman from `origin` (a 6-digit county code). Deterministic: the same
/// `(origin, n)` gives the same person; different `n` below 1,000,000 give different IDs.
pub fn person(origin: &str, n: u32) -> Person {
    assert!(origin.len() == 6, "origin must be a county code");
    let birth = NaiveDate::from_ymd_opt(1980, 1, 1).expect("valid") + chrono::Days::new(u64::from(n % 7300));
    // The 17th digit is even for women; n / 7300 keeps IDs apart across birth dates.
    let seq = (n / 7300) % 500 * 2;
    let first17 = format!("{origin}{}{seq:03}", birth.format("%Y%m%d"));
    let id_number = with_check_digit(&first17);
    let h = n.wrapping_mul(2_654_435_761);
    Person {
        id_number,
        name: format!("{}{}", SURNAMES[(h % 16) as usize], GIVEN[((h >> 8) % 16) as usize]),
        phone: format!("139{:08}", h % 100_000_000),
        address: format!("{}{}号{}室", STREETS[((h >> 16) % 8) as usize], n % 300 + 1, (h >> 4) % 30 + 101),
        origin: origin.to_owned(),
    }
}

impl Person {
    /// A move-in request for this person at a destination node.
    pub fn move_in(&self, division: &str, date: NaiveDate, category: pb::Category) -> pb::RegisterMoveInRequest {
        pb::RegisterMoveInRequest {
            id_number: self.id_number.clone(),
            name: self.name.clone(),
            phone: self.phone.clone(),
            category: category as i32,
            role: if category == pb::Category::Organisation { pb::Role::Workplace } else { pb::Role::Residence } as i32,
            division: division.to_owned(),
            address: self.address.clone(),
            date: date.to_string(),
            household_division: String::new(),
            urgent: false,
            reason_of_stay: 0,
        }
    }

    /// Her out-migrant record at her origin county.
    pub fn out_migrant(&self, date: NaiveDate) -> pb::RegisterMoveInRequest {
        pb::RegisterMoveInRequest {
            category: pb::Category::OutMigrant as i32,
            role: pb::Role::Origin as i32,
            division: self.origin.clone(),
            ..self.move_in(&self.origin, date, pb::Category::OutMigrant)
        }
    }
}

/// The destination categories, in rotation.
pub fn category(n: u32) -> pb::Category {
    [
        pb::Category::ClosedCommunity,
        pb::Category::MixedCommunity,
        pb::Category::UrbanVillage,
        pb::Category::Market,
        pb::Category::Organisation,
    ][(n % 5) as usize]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ldx_node::domain::ResidentId;

    use super::*;

    #[test]
    fn ids_are_valid_distinct_and_female() {
        let mut seen = HashSet::new();
        for n in 0..20_000 {
            let p = person("411421", n);
            let id = ResidentId::parse("id_number", &p.id_number).unwrap();
            assert_eq!(id.division_prefix(), "411421");
            assert_eq!((p.id_number.as_bytes()[16] - b'0') % 2, 0, "17th digit is even for women");
            assert!(seen.insert(p.id_number), "duplicate ID for n = {n}");
        }
    }

    #[test]
    fn people_are_deterministic() {
        assert_eq!(person("411421", 7).id_number, person("411421", 7).id_number);
        assert_eq!(person("411421", 7).name, person("411421", 7).name);
    }
}
