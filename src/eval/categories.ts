/**
 * Subject → category tables for the multiple-choice benchmarks.
 *
 * C-Eval: the official mapping, `subject_mapping.json` in github.com/hkust-nlp/ceval (also Table 1 of
 * the C-Eval paper, arXiv:2305.08322). 52 subjects: 20 STEM, 10 Social Science, 11 Humanities,
 * 11 Other. (The JSON file leaves `clinical_medicine` without its category; the paper lists it under
 * Other, which is what we use.)
 *
 * CMMLU: `src/categories.py` in github.com/haonan-li/CMMLU maps each subject to subcategories and
 * subcategories to STEM / Humanities / Social Science / Other, plus an overlapping "China specific"
 * group. We use the category of each subject's first subcategory, so every subject has exactly one
 * of the four categories and category totals add up to the overall total (the overlapping China
 * specific group is not reported).
 */

export const CATEGORIES = ["STEM", "Social Science", "Humanities", "Other"] as const
export type Category = (typeof CATEGORIES)[number]
/** Subjects in neither table (a custom directory) are reported under this name. */
export const UNCATEGORIZED = "Uncategorized"

const group = (category: Category, subjects: string): Array<[string, Category]> =>
  subjects.trim().split(/\s+/).map((s) => [s, category])

/** C-Eval's official subject → category mapping (hkust-nlp/ceval subject_mapping.json). */
export const CEVAL_CATEGORIES: Readonly<Record<string, Category>> = Object.fromEntries([
  ...group(
    "STEM",
    `computer_network operating_system computer_architecture college_programming college_physics college_chemistry
     advanced_mathematics probability_and_statistics discrete_mathematics electrical_engineer metrology_engineer
     high_school_mathematics high_school_physics high_school_chemistry high_school_biology middle_school_mathematics
     middle_school_biology middle_school_physics middle_school_chemistry veterinary_medicine`,
  ),
  ...group(
    "Social Science",
    `college_economics business_administration marxism mao_zedong_thought education_science teacher_qualification
     high_school_politics high_school_geography middle_school_politics middle_school_geography`,
  ),
  ...group(
    "Humanities",
    `modern_chinese_history ideological_and_moral_cultivation logic law chinese_language_and_literature art_studies
     professional_tour_guide legal_professional high_school_chinese high_school_history middle_school_history`,
  ),
  ...group(
    "Other",
    `civil_servant sports_science plant_protection basic_medicine clinical_medicine urban_and_rural_planner accountant
     fire_engineer environmental_impact_assessment_engineer tax_accountant physician`,
  ),
])

/** CMMLU subject → category via its first subcategory (haonan-li/CMMLU src/categories.py). */
export const CMMLU_CATEGORIES: Readonly<Record<string, Category>> = Object.fromEntries([
  ...group(
    "STEM",
    `anatomy astronomy college_actuarial_science college_engineering_hydrology college_mathematics
     college_medical_statistics computer_science conceptual_physics electrical_engineering elementary_mathematics
     genetics high_school_biology high_school_chemistry high_school_mathematics high_school_physics machine_learning
     virology`,
  ),
  ...group(
    "Humanities",
    `arts chinese_history chinese_literature college_law global_facts international_law jurisprudence logical
     marxist_theory philosophy professional_law world_history world_religions`,
  ),
  ...group(
    "Social Science",
    `ancient_chinese business_ethics chinese_civil_service_exam chinese_food_culture chinese_foreign_policy
     chinese_teacher_qualification college_education economics education elementary_chinese ethnology
     high_school_geography high_school_politics journalism management marketing modern_chinese professional_accounting
     professional_psychology public_relations security_study sociology`,
  ),
  ...group(
    "Other",
    `agronomy chinese_driving_rule clinical_knowledge college_medicine computer_security construction_project_management
     elementary_commonsense elementary_information_and_technology food_science human_sexuality legal_and_moral_basis
     nutrition professional_medicine sports_science traditional_chinese_medicine`,
  ),
])

export type Benchmark = "ceval" | "cmmlu"

export const categoryOf = (benchmark: Benchmark, subject: string): string =>
  (benchmark === "ceval" ? CEVAL_CATEGORIES : CMMLU_CATEGORIES)[subject] ?? UNCATEGORIZED
