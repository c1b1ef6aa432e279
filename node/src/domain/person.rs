//! Roles, management categories and the validated forms of each registry command.

use chrono::NaiveDate;
use ldx_proto::v1 as pb;

use super::division::{Division, Level};
use super::error::InvalidField;
use super::fields::{self, ADDRESS_MAX, DETAILS_MAX, NAME_MAX};
use super::id::ResidentId;

/// The role this node plays for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Origin,
    Residence,
    Workplace,
}

/// The six management categories of the service rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    ClosedCommunity,
    MixedCommunity,
    UrbanVillage,
    Market,
    Organisation,
    OutMigrant,
}

impl Role {
    pub fn from_proto(field: &'static str, raw: i32) -> Result<Self, InvalidField> {
        match pb::Role::try_from(raw) {
            Ok(pb::Role::Origin) => Ok(Self::Origin),
            Ok(pb::Role::Residence) => Ok(Self::Residence),
            Ok(pb::Role::Workplace) => Ok(Self::Workplace),
            _ => Err(InvalidField::new(field, raw, "must be one of ORIGIN, RESIDENCE, WORKPLACE")),
        }
    }

    pub fn to_proto(self) -> pb::Role {
        match self {
            Self::Origin => pb::Role::Origin,
            Self::Residence => pb::Role::Residence,
            Self::Workplace => pb::Role::Workplace,
        }
    }
}

impl Category {
    pub const NAMES: &'static str =
        "CLOSED_COMMUNITY, MIXED_COMMUNITY, URBAN_VILLAGE, MARKET, ORGANISATION, OUT_MIGRANT";

    pub fn from_proto(field: &'static str, raw: i32) -> Result<Self, InvalidField> {
        match pb::Category::try_from(raw) {
            Ok(pb::Category::ClosedCommunity) => Ok(Self::ClosedCommunity),
            Ok(pb::Category::MixedCommunity) => Ok(Self::MixedCommunity),
            Ok(pb::Category::UrbanVillage) => Ok(Self::UrbanVillage),
            Ok(pb::Category::Market) => Ok(Self::Market),
            Ok(pb::Category::Organisation) => Ok(Self::Organisation),
            Ok(pb::Category::OutMigrant) => Ok(Self::OutMigrant),
            _ => Err(InvalidField::new(field, raw, format!("must be one of {}", Self::NAMES))),
        }
    }

    pub fn to_proto(self) -> pb::Category {
        match self {
            Self::ClosedCommunity => pb::Category::ClosedCommunity,
            Self::MixedCommunity => pb::Category::MixedCommunity,
            Self::UrbanVillage => pb::Category::UrbanVillage,
            Self::Market => pb::Category::Market,
            Self::Organisation => pb::Category::Organisation,
            Self::OutMigrant => pb::Category::OutMigrant,
        }
    }
}

/// A validated move-in at this node.
#[derive(Debug, Clone)]
pub struct MoveIn {
    pub id: ResidentId,
    pub name: String,
    pub phone: String,
    pub category: Category,
    pub role: Role,
    pub division: Division,
    pub address: String,
    pub date: NaiveDate,
    /// Her origin county: the explicit household division's county, else the ID's prefix.
    pub origin: Division,
    /// Her household registration as precisely as known: the explicit household division
    /// (a township, when given), else her origin county. Her notice carries it, so a
    /// county node can tell her township.
    pub household: Division,
    /// Her origin's feedback is needed urgently (the shorter deadline).
    pub urgent: bool,
    /// Her household registration is in the same city as where she now lives or works: a
    /// local resident at this node, not a floating one (no notice, no report cycle).
    pub local: bool,
}

impl MoveIn {
    /// Checks every field against its rule. `node` is this node's division: where she
    /// lives, works or is registered must lie within it.
    pub fn validate(req: &pb::RegisterMoveInRequest, node: &Division, today: NaiveDate) -> Result<Self, InvalidField> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let name = fields::required_text("name", &req.name, NAME_MAX, true)?;
        let phone = fields::phone("phone", &req.phone)?;
        let category = Category::from_proto("category", req.category)?;
        let role = Role::from_proto("role", req.role)?;
        let division = Division::parse_node_level("division", &req.division)?;
        if !node.contains(&division) {
            return Err(InvalidField::new(
                "division",
                &req.division,
                format!("must lie within this node's division {node} ({})", node.name()),
            ));
        }
        let address = fields::required_text("address", &req.address, ADDRESS_MAX, true)?;
        let date = fields::past_date("date", &req.date, today)?;
        if date < id.birth_date() {
            return Err(InvalidField::new("date", &req.date, "is before her birth date"));
        }
        let origin = origin_county(&id, &req.household_division)?;
        let household = match req.household_division.trim() {
            "" => origin.clone(),
            explicit => Division::parse_node_level("household_division", explicit)?,
        };
        check_stay(req.reason_of_stay)?;
        let local = role != Role::Origin && household.city() == division.city();

        match (role, category) {
            (Role::Origin, Category::OutMigrant) if origin.contains(&division) || division.contains(&origin) => {}
            (Role::Origin, Category::OutMigrant) => {
                return Err(InvalidField::new(
                    "division",
                    &req.division,
                    format!("must be her household registration, which is in {origin}"),
                ));
            }
            (Role::Origin, _) => {
                return Err(InvalidField::new("category", req.category, "must be OUT_MIGRANT for role ORIGIN"));
            }
            (_, Category::OutMigrant) => {
                return Err(InvalidField::new(
                    "category",
                    req.category,
                    "OUT_MIGRANT is kept by her origin (role ORIGIN), not by a residence or workplace",
                ));
            }
            _ => {}
        }
        Ok(Self {
            id,
            name,
            phone,
            category,
            role,
            division,
            address,
            date,
            origin,
            household,
            urgent: req.urgent,
            local,
        })
    }
}

/// Why she stays: any but a short stay, which the floating-population rules leave out
/// (seed 000 五: 出差、就医、上学、旅游、探亲访友).
fn check_stay(raw: i32) -> Result<(), InvalidField> {
    use pb::StayReason as R;
    match R::try_from(raw) {
        Ok(R::Unspecified | R::Work | R::Business | R::Other) => Ok(()),
        Ok(short) => Err(InvalidField::new(
            "reason_of_stay",
            short.as_str_name(),
            "is a short stay (business trip, medical care, study, a visit), which the floating-population \
             rules leave out: nothing is registered",
        )),
        Err(_) => Err(InvalidField::new("reason_of_stay", raw, "must be WORK, BUSINESS or OTHER, or left empty")),
    }
}

/// The county her origin node serves.
fn origin_county(id: &ResidentId, household_division: &str) -> Result<Division, InvalidField> {
    if !household_division.trim().is_empty() {
        let explicit = Division::parse_node_level("household_division", household_division)?;
        return Ok(explicit.county().expect("county or township level"));
    }
    match Division::parse("id_number", id.division_prefix()) {
        Ok(d) if d.level() == Level::County => Ok(d),
        _ => Err(InvalidField::new(
            "household_division",
            "",
            format!("is required: the ID's division {} is not a county in the current code list", id.division_prefix()),
        )),
    }
}

/// A validated move-out.
#[derive(Debug, Clone)]
pub struct MoveOut {
    pub id: ResidentId,
    pub date: NaiveDate,
    pub next_division: Option<Division>,
}

impl MoveOut {
    pub fn validate(req: &pb::RegisterMoveOutRequest, today: NaiveDate) -> Result<Self, InvalidField> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let date = fields::past_date("date", &req.date, today)?;
        let next_division = if req.next_division.trim().is_empty() {
            None
        } else {
            Some(Division::parse_node_level("next_division", &req.next_division)?)
        };
        Ok(Self { id, date, next_division })
    }
}

/// A validated service record.
#[derive(Debug, Clone)]
pub struct ServiceGiven {
    pub id: ResidentId,
    pub kind: pb::ServiceKind,
    pub date: NaiveDate,
    pub details: String,
}

impl ServiceGiven {
    pub fn validate(req: &pb::RecordServiceRequest, today: NaiveDate) -> Result<Self, InvalidField> {
        let id = ResidentId::parse("id_number", &req.id_number)?;
        let kind = match pb::ServiceKind::try_from(req.kind) {
            Ok(pb::ServiceKind::HealthCheck) => pb::ServiceKind::HealthCheck,
            _ => return Err(InvalidField::new("kind", req.kind, "must be HEALTH_CHECK")),
        };
        let date = fields::past_date("date", &req.date, today)?;
        let details = fields::optional_text("details", &req.details, DETAILS_MAX, true)?;
        Ok(Self { id, kind, date, details })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn node() -> Division {
        Division::parse("division", "410103007").unwrap()
    }

    pub fn request() -> pb::RegisterMoveInRequest {
        pb::RegisterMoveInRequest {
            id_number: "11010519491231002X".into(),
            name: "测试甲".into(),
            phone: "13800000000".into(),
            category: pb::Category::MixedCommunity as i32,
            role: pb::Role::Residence as i32,
            division: "410103007".into(),
            address: "大学路 1 号".into(),
            date: "2026-03-01".into(),
            household_division: String::new(),
            urgent: false,
            reason_of_stay: 0,
        }
    }

    #[test]
    fn valid_move_in_takes_origin_from_the_id() {
        let m = MoveIn::validate(&request(), &node(), today()).unwrap();
        assert_eq!(m.origin.as_str(), "110105");
        assert_eq!(m.role, Role::Residence);
    }

    #[test]
    fn explicit_household_division_overrides_the_id() {
        let mut r = request();
        r.household_division = "411421001".into();
        let m = MoveIn::validate(&r, &node(), today()).unwrap();
        assert_eq!(m.origin.as_str(), "411421");
    }

    type Mutation = Box<dyn Fn(&mut pb::RegisterMoveInRequest)>;

    #[test]
    fn every_field_rule_names_its_field() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("id_number", Box::new(|r| r.id_number = "110105194912310021".into())),
            ("name", Box::new(|r| r.name = String::new())),
            ("name", Box::new(|r| r.name = "名".repeat(65))),
            ("phone", Box::new(|r| r.phone = "call me".into())),
            ("category", Box::new(|r| r.category = 42)),
            ("category", Box::new(|r| r.category = 0)),
            ("role", Box::new(|r| r.role = 0)),
            ("division", Box::new(|r| r.division = "410103999".into())),
            ("division", Box::new(|r| r.division = "410102001".into())),
            ("address", Box::new(|r| r.address = " ".into())),
            ("address", Box::new(|r| r.address = "路".repeat(257))),
            ("date", Box::new(|r| r.date = "2026-02-30".into())),
            ("date", Box::new(|r| r.date = "2027-01-01".into())),
            ("date", Box::new(|r| r.date = "1940-01-01".into())),
            ("household_division", Box::new(|r| r.household_division = "999999".into())),
            ("category", Box::new(|r| r.category = pb::Category::OutMigrant as i32)),
        ];
        for (field, mutate) in cases {
            let mut r = request();
            mutate(&mut r);
            let e = MoveIn::validate(&r, &node(), today()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn origin_role_needs_out_migrant_and_her_household_division() {
        let county = Division::parse("division", "411421").unwrap();
        let mut r = request();
        r.id_number = crate::domain::id::with_check_digit("41142119900101002");
        r.role = pb::Role::Origin as i32;
        r.category = pb::Category::OutMigrant as i32;
        r.division = "411421001".into();
        assert!(MoveIn::validate(&r, &county, today()).is_ok());
        r.category = pb::Category::Market as i32;
        assert_eq!(MoveIn::validate(&r, &county, today()).unwrap_err().field, "category");
        r.category = pb::Category::OutMigrant as i32;
        r.household_division = "410103007".into();
        assert_eq!(MoveIn::validate(&r, &county, today()).unwrap_err().field, "division");
    }

    #[test]
    fn move_out_and_service_rules() {
        let today = today();
        let ok = pb::RegisterMoveOutRequest {
            id_number: "11010519491231002X".into(),
            date: "2026-10-01".into(),
            next_division: String::new(),
        };
        assert!(MoveOut::validate(&ok, today).unwrap().next_division.is_none());
        let bad = pb::RegisterMoveOutRequest { next_division: "12".into(), ..ok.clone() };
        assert_eq!(MoveOut::validate(&bad, today).unwrap_err().field, "next_division");
        let s = pb::RecordServiceRequest {
            id_number: "11010519491231002X".into(),
            kind: 7,
            date: "2026-10-01".into(),
            details: String::new(),
        };
        assert_eq!(ServiceGiven::validate(&s, today).unwrap_err().field, "kind");
        let s = pb::RecordServiceRequest { kind: pb::ServiceKind::HealthCheck as i32, details: "x".repeat(1025), ..s };
        assert_eq!(ServiceGiven::validate(&s, today).unwrap_err().field, "details");
    }
}
