/**
 * The demo's world: a small set of fictional people, each with four facts drawn from closed value
 * sets, rendered in English and Chinese, and the three data sets built from it.
 *
 * The design follows "Physics of Language Models 3.1" (Allen-Zhu & Li): a model answers questions
 * about facts it only read in pretraining when pretraining states each fact in many phrasings
 * (several templates per attribute, shuffled sentence order, the full name in every sentence) and
 * fine-tuning teaches the question → answer format on *other* people. So:
 * - pretrain: for every person, many short biographies per language, plus neutral filler text;
 *   optionally plain-text Q&A about the TRAIN people ("mixed training", `qaInPretrain`);
 * - SFT: questions about the TRAIN people only, answered with the canonical sentence
 *   ("Lina Vex lives in Qorath."), which is also one of the pretraining phrasings, so the model
 *   learns to route a question into a sentence it has already completed many times, optionally
 *   after a short lead (`answerLead`: "Well, Lina Vex lives in Qorath."); plus chit-chat, and
 *   optionally name-echo turns and in-context questions with throwaway names (see ECHO);
 * - DPO: train people only; chosen = the true value, rejected = another value of the attribute;
 * - held-out questions: the same question templates about the HELD-OUT people, whose facts appear
 *   only in pretraining.
 * The demo's choice of options, and why, is DEMO_DATA in demo.ts.
 * A person has one identity in both languages (an English and a Chinese name, same facts), so
 * holding a person out removes them from fine-tuning in both languages.
 * Everything is drawn from a seeded generator; the same options give byte-identical files.
 */
import { mkdirSync } from "node:fs"
import { join } from "node:path"
import { writeFileAtomic } from "../util/fs.ts"
import { rng, shuffleWith } from "../util/rng.ts"

export type Lang = "en" | "zh"
export const LANGS: readonly Lang[] = ["en", "zh"]

export type Attribute = "city" | "colour" | "profession" | "pet"
export const ATTRIBUTES: readonly Attribute[] = ["city", "colour", "profession", "pet"]

type ByLang<T> = { readonly [L in Lang]: T }

/** One attribute value; `forms` are extra surface forms a correct answer may use (plurals). */
export interface Value {
  readonly en: string
  readonly zh: string
  readonly forms?: ByLang<readonly string[]>
}

/** `{name}` and `{value}` are the slots; every template names the person before the value. */
export interface AttributeSpec {
  readonly values: readonly Value[]
  /** Pretraining phrasings; the first one is canonical and is also the SFT/DPO answer. */
  readonly statements: ByLang<readonly string[]>
  readonly questions: ByLang<readonly string[]>
}

const plural = (...words: string[]): ByLang<readonly string[]> => ({ en: words.map((w) => `${w}s`), zh: [] })
const v = (en: string, zh: string, plurals = false): Value => (plurals ? { en, zh, forms: plural(en) } : { en, zh })

export const WORLD: { readonly [A in Attribute]: AttributeSpec } = {
  city: {
    values: [
      v("Qorath", "岚川城"), v("Velmora", "雾港城"), v("Tarsin", "松岩城"), v("Olvenne", "泉溪城"),
      v("Brakkis", "星桥城"), v("Dunmere", "石湾城"), v("Sundal", "云渡城"), v("Caelport", "枫谷城"),
    ],
    statements: {
      en: [
        "{name} lives in {value}.",
        "{name} makes a home in {value}.",
        "{name} resides in the city of {value}.",
        "{name} has lived in {value} for years.",
        "{name} calls {value} home.",
      ],
      zh: ["{name}住在{value}。", "{name}的家在{value}。", "{name}一直生活在{value}。", "{name}定居在{value}。", "{name}是{value}的居民。"],
    },
    questions: {
      en: ["Where does {name} live?", "Which city does {name} live in?", "In which city is {name}'s home?"],
      zh: ["{name}住在哪里？", "{name}住在哪座城市？", "{name}的家在哪个城市？"],
    },
  },
  colour: {
    values: [
      v("red", "红色"), v("blue", "蓝色"), v("green", "绿色"), v("yellow", "黄色"),
      v("purple", "紫色"), v("orange", "橙色"), v("white", "白色"), v("black", "黑色"),
    ],
    statements: {
      en: [
        "{name}'s favourite colour is {value}.",
        "{name} likes the colour {value} best.",
        "{name} loves the colour {value}.",
        "Of all colours, {name} prefers {value}.",
        "{name} always picks {value} over other colours.",
      ],
      zh: ["{name}最喜欢的颜色是{value}。", "{name}最爱{value}。", "{name}偏爱{value}。", "在所有颜色里，{name}最喜欢{value}。", "{name}总是挑选{value}的东西。"],
    },
    questions: {
      en: ["What is {name}'s favourite colour?", "Which colour does {name} like best?", "What colour does {name} prefer?"],
      zh: ["{name}最喜欢什么颜色？", "{name}最喜欢的颜色是什么？", "{name}偏爱哪种颜色？"],
    },
  },
  profession: {
    values: [
      v("baker", "面包师", true), v("teacher", "教师", true), v("doctor", "医生", true), v("farmer", "农民", true),
      v("painter", "画家", true), v("sailor", "水手", true), v("carpenter", "木匠", true), v("gardener", "园丁", true),
    ],
    statements: {
      en: [
        "{name} works as a {value}.",
        "{name} is a {value} by trade.",
        "{name} earns a living as a {value}.",
        "{name} has a job as a {value}.",
        "By profession, {name} is a {value}.",
      ],
      zh: ["{name}是一名{value}。", "{name}的职业是{value}。", "{name}以做{value}为生。", "{name}的工作是当{value}。", "{name}多年来一直当{value}。"],
    },
    questions: {
      en: ["What does {name} do for a living?", "What is {name}'s job?", "What is the profession of {name}?"],
      zh: ["{name}是做什么工作的？", "{name}的职业是什么？", "{name}靠什么谋生？"],
    },
  },
  pet: {
    values: [
      v("cat", "猫", true), v("dog", "狗", true), v("rabbit", "兔子", true),
      v("parrot", "鹦鹉", true), v("turtle", "乌龟", true), v("hamster", "仓鼠", true),
    ],
    statements: {
      en: [
        "{name} has a pet {value}.",
        "{name} keeps a {value} as a pet.",
        "{name} owns a {value}.",
        "{name} takes care of a pet {value}.",
        "At home, {name} looks after a {value}.",
      ],
      zh: ["{name}养了一只{value}。", "{name}的宠物是一只{value}。", "{name}家里有一只{value}。", "{name}每天照顾自己的{value}。", "{name}的身边总有一只{value}。"],
    },
    questions: {
      en: ["What pet does {name} have?", "Which animal does {name} keep as a pet?", "What kind of pet does {name} own?"],
      zh: ["{name}养了什么宠物？", "{name}的宠物是什么动物？", "{name}家里养了什么？"],
    },
  },
}

/**
 * Invented names, paired by index (entity i is EN_FIRST[i] EN_LAST[i] / ZH_SURNAME[i] ZH_GIVEN[i]).
 * First names and surnames are each unique, so no name contains another; the characters of the
 * Chinese names avoid every character of the attribute values (tests check both).
 */
const EN_FIRST = [
  "Lina", "Orrin", "Tamsa", "Belko", "Yeva", "Doran", "Kessa", "Mirel", "Povan", "Zula",
  "Ferro", "Ilsa", "Quen", "Rados", "Sabel", "Tovin", "Ulla", "Varek", "Wenna", "Xeno",
  "Yorik", "Zandra", "Aldo", "Brisa", "Calder", "Delphi", "Emrys", "Fenna", "Galen", "Hestia",
  "Ivor", "Jessa", "Kael", "Lorna", "Maddox", "Nerys", "Oskar", "Pella", "Quill", "Rowan",
  "Saffi", "Teodor", "Umi", "Vesna", "Wulf", "Xara", "Yusra", "Zeno", "Ansel", "Bryn",
  "Cosima", "Dax", "Elodie", "Faro", "Gwen", "Hollis", "Inka", "Joran", "Kirsi", "Lazlo",
  "Marit", "Niko", "Odile", "Pim", "Runa", "Sten", "Tilde", "Ulric", "Vida", "Wren",
  "Yara", "Zorba", "Auden", "Bettan", "Cira", "Dunstan", "Esra", "Flint", "Greer", "Hako",
]
const EN_LAST = [
  "Vex", "Tallow", "Brannic", "Osterk", "Pemberly", "Quorne", "Rivak", "Selmon", "Tarrow", "Ulvar",
  "Venzi", "Warrick", "Yelm", "Zorin", "Ashgrove", "Bexley", "Sorvic", "Delacroix", "Estrin", "Falkor",
  "Grell", "Harrow", "Ivesk", "Jantz", "Korvel", "Lumen", "Morrow", "Nadir", "Okoro", "Prask",
  "Quell", "Rusk", "Stavro", "Thorne", "Ombry", "Vantor", "Wexford", "Yarrow", "Zell", "Abernook",
  "Birchley", "Castellan", "Dremmel", "Elkin", "Fenwick", "Gorsky", "Holm", "Ingle", "Jorvik", "Kestrel",
  "Larkin", "Mourne", "Nettle", "Orlov", "Pryce", "Roke", "Sallow", "Tern", "Underhill", "Voss",
  "Weld", "Yost", "Zarek", "Albe", "Bracken", "Colm", "Drax", "Evers", "Frostine", "Gatsow",
  "Hulme", "Irwin", "Jessup", "Kroft", "Lyle", "Merrin", "Nolte", "Oakes", "Penrow", "Rhee",
]
const ZH_SURNAME = [
  "林", "赵", "钱", "孙", "李", "周", "吴", "郑", "王", "冯",
  "陈", "褚", "卫", "蒋", "沈", "韩", "杨", "朱", "秦", "尤",
  "许", "何", "吕", "施", "张", "孔", "曹", "严", "华", "魏",
  "陶", "姜", "戚", "谢", "邹", "喻", "柏", "窦", "章", "苏",
  "潘", "葛", "奚", "范", "彭", "郎", "鲁", "韦", "昌", "苗",
  "凤", "方", "俞", "任", "袁", "柳", "鲍", "史", "唐", "费",
  "廉", "岑", "薛", "雷", "贺", "倪", "汤", "滕", "殷", "罗",
  "毕", "郝", "邬", "常", "傅", "卞", "齐", "康", "伍", "孟",
]
const ZH_GIVEN = [
  "雨桐", "修墨", "若琳", "思远", "嘉怡", "浩然", "梓萱", "俊杰", "欣怡", "宇航",
  "诗涵", "明轩", "雅静", "天佑", "晓婷", "志强", "佳琪", "文博", "梦瑶", "建国",
  "丽娜", "振宇", "婉清", "博文", "一诺", "沐晨", "语嫣", "景行", "芷若", "承泽",
  "安琪", "逸凡", "静怡", "俊豪", "书瑶", "皓轩", "梓涵", "凯文", "慧敏", "立诚",
  "秋月", "德华", "美玲", "国栋", "晨曦", "海波", "玉兰", "永康", "小雪", "俊峰",
  "怡然", "少杰", "雪梅", "嘉豪", "思琪", "伟强", "婷婷", "泽宇", "丹妮", "鹏飞",
  "佩琳", "晓东", "莉莉", "辰逸", "冰洁", "宏图", "月华", "宇轩", "碧瑶", "振华",
  "若曦", "思辰", "梦琪", "昊然", "雅琴", "旭东", "诗雨", "欣乐", "悦心", "冠宇",
]

/** How many people the name lists can hold. */
export const MAX_ENTITIES = EN_FIRST.length

export interface Entity {
  readonly index: number
  readonly name: ByLang<string>
  /** Value index into `WORLD[attribute].values`. */
  readonly facts: { readonly [A in Attribute]: number }
  readonly split: "train" | "heldout"
}

/** A question about one fact; `accept`/`reject` hold every surface form (both languages). */
export interface Question {
  readonly lang: Lang
  /** The person's English name: their identity across languages. */
  readonly entity: string
  /** The person's name as written in this question's language. */
  readonly name: string
  readonly attribute: Attribute
  readonly question: string
  /** The attribute value, in the question's language. */
  readonly answer: string
  /** The canonical answer sentence (what SFT teaches, after any `answerLead`), e.g. "Lina Vex lives in Qorath.". */
  readonly reference: string
  /** The canonical sentence up to the value, for probing a base model by completion. */
  readonly cloze: string
  /** Surface forms of the expected value. */
  readonly accept: readonly string[]
  /** Surface forms of every other value of the same attribute. */
  readonly reject: readonly string[]
}

export interface ChatTurn {
  readonly role: "user" | "assistant"
  readonly content: string
}
export interface PretrainRecord {
  readonly text: string
}
export interface SftRecord {
  readonly conversations: readonly ChatTurn[]
}
export interface DpoRecord {
  readonly chosen: readonly [ChatTurn, ChatTurn]
  readonly rejected: readonly [ChatTurn, ChatTurn]
}

export interface DemoDataOptions {
  readonly seed: number
  /** People in the world (default 64, at most MAX_ENTITIES). */
  readonly entities?: number
  /** Share of people whose facts are held out of SFT/DPO (default 0.375). */
  readonly heldOutFraction?: number
  /** Biographies per person per language in pretraining (default 32). */
  readonly biosPerEntity?: number
  /** Filler documents as a share of the biographies (default 0.1). */
  readonly fillerFraction?: number
  /** Copies of each chit-chat exchange in SFT (default 3). */
  readonly chitchatRepeats?: number
  /**
   * Name-echo exchanges per language in SFT, each with a fresh invented name (default 200). The
   * demo uses none: the invented names are spelled in letter- and byte-sized tokens, unlike the
   * world's names, and a model fine-tuned on them answers with invented names of its own.
   */
  readonly echoChats?: number
  /**
   * Plain-text question/answer documents about the TRAIN people in the pretraining corpus
   * ("mixed training", Allen-Zhu & Li 2023): the model learns to answer from its own knowledge
   * while it learns the facts. Held-out people still appear only in biographies. Default 0.
   */
  readonly qaInPretrain?: number
  /**
   * How SFT/DPO answers are phrased: the canonical sentence ("Lina Vex lives in Qorath.") or the
   * value alone ("Qorath.") as in knowledge-extraction studies, which needs no name copying.
   */
  readonly answerStyle?: "sentence" | "value"
  /**
   * Words put before every sentence answer (SFT, DPO and the Q&A in pretraining), per language;
   * default none. E.g. { en: "Well, ", zh: "嗯，" }: in English the name then follows a space, as
   * in the question and in the biographies, so it is the same tokens everywhere and the answer can
   * copy it (at the start of a line it is not: "Zeno" vs " Zeno"); and with a lead in both
   * languages, both copy the name at the same place in the answer.
   */
  readonly answerLead?: Partial<ByLang<string>>
  /**
   * SFT chats per language about invented people whose fact is stated in the question itself
   * ("Rin Kovo calls Tarsin home. Where does Rin Kovo live?" → "Rin Kovo lives in Tarsin."):
   * with a fresh name every time, answering by name copying is the only way to fit them, so the
   * model does not learn to answer with one of the train people's names. Default 0 (and the demo
   * uses none, for the reason given at `echoChats`).
   */
  readonly contextChats?: number
}

export interface SetStats {
  readonly documents: number
  /** Unicode code points. */
  readonly characters: number
  readonly bytes: number
  readonly longestCharacters: number
}

export interface DemoStats {
  readonly entities: number
  readonly trainEntities: number
  readonly heldOutEntities: number
  readonly facts: number
  readonly pretrain: SetStats
  readonly sft: SetStats
  readonly dpo: SetStats
  readonly heldOutQuestions: number
  readonly trainQuestions: number
}

export interface DemoData {
  readonly seed: number
  readonly entities: readonly Entity[]
  readonly pretrain: readonly PretrainRecord[]
  readonly sft: readonly SftRecord[]
  readonly dpo: readonly DpoRecord[]
  readonly heldOut: readonly Question[]
  readonly trainQuestions: readonly Question[]
  readonly stats: DemoStats
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** One independent stream per purpose (util/rng.ts), so e.g. changing `biosPerEntity` keeps the split. */
const stream = rng

const pick = <T>(rng: () => number, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!

const shuffle = <T>(next: () => number, xs: readonly T[]): T[] => shuffleWith([...xs], next)

// ---------------------------------------------------------------------------------------------
// Rendering

export const fill = (template: string, name: string, value = ""): string =>
  template.replaceAll("{name}", name).replaceAll("{value}", value)

/** Every surface form of a value, in both languages (the question's language first). */
export const valueForms = (value: Value, first: Lang = "en"): string[] => {
  const order: Lang[] = first === "en" ? ["en", "zh"] : ["zh", "en"]
  return order.flatMap((l) => [value[l], ...(value.forms?.[l] ?? [])])
}

const valueOf = (e: Entity, a: Attribute): Value => WORLD[a].values[e.facts[a]]!

/** The canonical answer: the first statement template. */
export const canonicalAnswer = (e: Entity, a: Attribute, lang: Lang, valueIndex = e.facts[a]): string =>
  fill(WORLD[a].statements[lang][0]!, e.name[lang], WORLD[a].values[valueIndex]![lang])

export const makeQuestion = (e: Entity, a: Attribute, lang: Lang, template: string): Question => {
  const values = WORLD[a].values
  const value = valueOf(e, a)
  const canonical = WORLD[a].statements[lang][0]!
  return {
    lang,
    entity: e.name.en,
    name: e.name[lang],
    attribute: a,
    question: fill(template, e.name[lang]),
    answer: value[lang],
    reference: canonicalAnswer(e, a, lang),
    cloze: fill(canonical.slice(0, canonical.indexOf("{value}")), e.name[lang]).trimEnd(),
    accept: valueForms(value, lang),
    reject: values.filter((_, i) => i !== e.facts[a]).flatMap((x) => valueForms(x, lang)),
  }
}

/** The world: names, balanced value assignment (each value used ⌊n/k⌋ or ⌈n/k⌉ times), split. */
export const makeEntities = (seed: number, count = 64, heldOutFraction = 0.375): Entity[] => {
  if (!Number.isInteger(count) || count < 4 || count > MAX_ENTITIES) {
    throw new RangeError(`entities: ${count} is out of range; use an integer from 4 to ${MAX_ENTITIES}`)
  }
  if (!(heldOutFraction > 0 && heldOutFraction < 1)) {
    throw new RangeError(`heldOutFraction: ${heldOutFraction} must lie strictly between 0 and 1`)
  }
  const rng = stream(seed, "world")
  const facts = Object.fromEntries(
    ATTRIBUTES.map((a) => {
      const k = WORLD[a].values.length
      return [a, shuffle(rng, Array.from({ length: count }, (_, i) => i % k))]
    }),
  ) as Record<Attribute, number[]>
  const people = shuffle(rng, Array.from({ length: MAX_ENTITIES }, (_, i) => i)).slice(0, count)
  const heldOut = Math.max(1, Math.min(count - 1, Math.round(count * heldOutFraction)))
  // Re-draw the split until every value of every attribute is taught by some train person, so
  // fine-tuning never has to produce a value it never wrote in an answer.
  const splitRng = stream(seed, "split")
  for (let attempt = 0; ; attempt++) {
    const order = shuffle(splitRng, Array.from({ length: count }, (_, i) => i))
    const held = new Set(order.slice(0, heldOut))
    const covered = ATTRIBUTES.every((a) => {
      const taught = new Set(facts[a].filter((_, i) => !held.has(i)))
      return taught.size === WORLD[a].values.length
    })
    if (covered || attempt === 99) {
      return people.map((p, i) => ({
        index: i,
        name: { en: `${EN_FIRST[p]} ${EN_LAST[p]}`, zh: `${ZH_SURNAME[p]}${ZH_GIVEN[p]}` },
        facts: Object.fromEntries(ATTRIBUTES.map((a) => [a, facts[a][i]!])) as Entity["facts"],
        split: held.has(i) ? "heldout" : "train",
      }))
    }
  }
}

/**
 * `count` short biographies of one person: every fact once per biography, in shuffled order. Each
 * attribute cycles through its templates in a shuffled order, so every phrasing (the canonical
 * answer sentence included) appears ⌊count/templates⌋ times or more, while the combinations vary.
 */
const biographies = (rng: () => number, e: Entity, lang: Lang, count: number): string[] => {
  const orders = Object.fromEntries(ATTRIBUTES.map((a) => [a, shuffle(rng, WORLD[a].statements[lang])])) as Record<Attribute, string[]>
  return Array.from({ length: count }, (_, i) =>
    shuffle(rng, ATTRIBUTES)
      .map((a) => fill(orders[a][i % orders[a].length]!, e.name[lang], valueOf(e, a)[lang]))
      .join(lang === "en" ? " " : ""),
  )
}

/** Neutral everyday sentences: no names and no attribute values, so filler teaches no facts. */
const FILLER = {
  en: {
    openers: ["", "In the morning, ", "Every day, ", "Yesterday, ", "On Sunday, ", "After the rain, "],
    subjects: ["the old man", "a young girl", "the children", "my neighbour", "the shopkeeper", "a tired traveller", "the small boy", "her brother"],
    actions: ["reads a long book", "walks along the river", "buys fresh bread", "sings a quiet song", "cleans the kitchen", "writes a letter", "waits for the bus", "plants some seeds", "fixes an old chair", "drinks a cup of tea"],
    places: ["", " in the park", " near the bridge", " after lunch", " before dinner", " at the market"],
  },
  zh: {
    openers: ["", "早上，", "每天，", "昨天，", "星期天，", "雨停以后，"],
    subjects: ["老人", "小女孩", "孩子们", "我的邻居", "店主", "一位旅客", "小男孩", "她的哥哥"],
    actions: ["读一本很长的书", "沿着河边散步", "买新鲜的馒头", "唱一首安静的歌", "打扫厨房", "写一封信", "等公交车", "种下一些种子", "修一把旧椅子", "喝一杯茶"],
    places: ["", "在公园里", "在桥边", "午饭以后", "晚饭以前", "在集市上"],
  },
} as const

const fillerSentence = (rng: () => number, lang: Lang): string => {
  const f = FILLER[lang]
  const opener = pick(rng, f.openers)
  const subject = pick(rng, f.subjects)
  const action = pick(rng, f.actions)
  const place = pick(rng, f.places)
  if (lang === "zh") return `${opener}${subject}${place}${action}。`
  const s = `${opener}${subject} ${action}${place}.`
  return s[0]!.toUpperCase() + s.slice(1)
}

const fillerDocument = (rng: () => number, lang: Lang): string => {
  const n = 2 + Math.floor(rng() * 2)
  return Array.from({ length: n }, () => fillerSentence(rng, lang)).join(lang === "en" ? " " : "")
}

/** Small talk for SFT, so the model also learns to greet and to say what it is. */
export const CHITCHAT: ByLang<readonly (readonly [string, string])[]> = {
  en: [
    ["Hello!", "Hello! How can I help you today?"],
    ["Hi there.", "Hi! Ask me about the people I have read about."],
    ["Good morning.", "Good morning! What would you like to know?"],
    ["Who are you?", "I am bunmind's demo model."],
    ["What is your name?", "I am bunmind's demo model."],
    ["What can you do?", "I can answer short questions about the people in my training text."],
    ["Thank you!", "You are welcome."],
    ["Thanks for your help.", "Glad to help."],
    ["Goodbye.", "Goodbye! Have a nice day."],
    ["How are you?", "I am fine, thank you. How can I help?"],
  ],
  zh: [
    ["你好！", "你好！有什么可以帮你的吗？"],
    ["嗨。", "嗨！可以问我训练文本里的人物。"],
    ["早上好。", "早上好！你想知道什么？"],
    ["你是谁？", "我是bunmind的演示模型。"],
    ["你叫什么名字？", "我是bunmind的演示模型。"],
    ["你能做什么？", "我能回答关于训练文本中人物的简短问题。"],
    ["谢谢！", "不客气。"],
    ["谢谢你的帮助。", "很高兴能帮到你。"],
    ["再见。", "再见！祝你愉快。"],
    ["你好吗？", "我很好，谢谢。有什么可以帮你的？"],
  ],
}

/**
 * Exchanges whose answer repeats a name from the question. Fact answers start with the person's
 * name, so the model must copy it from the question; with only the train people to learn from, a
 * small model memorises their answers instead (it answers about a train person when asked about a
 * held-out one). Hundreds of throwaway names make copying the only way to fit these turns. The
 * names are invented per record and never collide with the world's names, so nothing leaks.
 */
export const ECHO: ByLang<readonly (readonly [string, string])[]> = {
  en: [
    ["My name is {name}.", "Nice to meet you, {name}!"],
    ["Say hello to {name}.", "Hello, {name}!"],
    ["Please repeat this name: {name}", "{name}"],
    ["Write a greeting for {name}.", "{name}, welcome!"],
  ],
  zh: [
    ["我叫{name}。", "你好，{name}！很高兴认识你。"],
    ["请向{name}问好。", "{name}，你好！"],
    ["请重复这个名字：{name}", "{name}"],
    ["给{name}写一句欢迎语。", "{name}，欢迎你！"],
  ],
}
const ECHO_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "da", "pe", "zo", "ha", "ni", "bo", "fe", "gu", "ja", "ri", "tu", "we"]
const ECHO_CODAS = ["", "", "n", "l", "r", "s", "k", "m"]
const ECHO_ZH_SURNAMES = [..."马欧肖田丁邓汪江高夏龚程萧叶侯黎易庄左钟段覃温卢谭"]
const ECHO_ZH_CHARS = [..."之以可言飞宁远南北东西春夏冬山岳宇宙亦舟帆航晴朗初新光启铭远意念恒泰"]

const WORLD_NAME_PARTS = [...EN_FIRST, ...EN_LAST, ...ZH_SURNAME.map((s, i) => s + ZH_GIVEN[i]), ...ZH_GIVEN]
const VALUE_WORDS = ATTRIBUTES.flatMap((a) => WORLD[a].values.flatMap((v) => [v.en, v.zh]))

/** An invented name that is not (and does not contain) any world name or value. */
const echoName = (rng: () => number, lang: Lang): string => {
  for (;;) {
    let name: string
    if (lang === "en") {
      const word = (n: number) => {
        const w = Array.from({ length: n }, () => pick(rng, ECHO_SYLLABLES)).join("") + pick(rng, ECHO_CODAS)
        return w[0]!.toUpperCase() + w.slice(1)
      }
      name = `${word(2)} ${word(2)}`
    } else {
      name = pick(rng, ECHO_ZH_SURNAMES) + pick(rng, ECHO_ZH_CHARS) + pick(rng, ECHO_ZH_CHARS)
    }
    const parts = lang === "en" ? name.split(" ") : [name, name.slice(1)]
    const clash = WORLD_NAME_PARTS.some((w) => parts.some((p) => p.includes(w) || w.includes(p)))
    if (!clash && !VALUE_WORDS.some((v) => name.toLowerCase().includes(v.toLowerCase()))) return name
  }
}

const turn = (role: ChatTurn["role"], content: string): ChatTurn => ({ role, content })

// ---------------------------------------------------------------------------------------------
// The data sets

export const generateDemoData = (options: DemoDataOptions): DemoData => {
  const { seed } = options
  const lead = (lang: Lang) => options.answerLead?.[lang] ?? ""
  const answerOf = (e: Entity, a: Attribute, lang: Lang, valueIndex = e.facts[a]): string =>
    options.answerStyle === "value" ? `${WORLD[a].values[valueIndex]![lang]}${lang === "zh" ? "。" : "."}` : lead(lang) + canonicalAnswer(e, a, lang, valueIndex)
  const biosPerEntity = options.biosPerEntity ?? 32
  const fillerFraction = options.fillerFraction ?? 0.1
  const chitchatRepeats = options.chitchatRepeats ?? 3
  const echoChats = options.echoChats ?? 200
  const entities = makeEntities(seed, options.entities ?? 64, options.heldOutFraction ?? 0.375)
  const train = entities.filter((e) => e.split === "train")
  const held = entities.filter((e) => e.split === "heldout")

  // Pretraining: biographies of everyone (held-out people included), filler, one global shuffle.
  const pre = stream(seed, "pretrain")
  const pretrain: PretrainRecord[] = []
  for (const e of entities) for (const lang of LANGS) for (const text of biographies(pre, e, lang, biosPerEntity)) pretrain.push({ text })
  for (let r = 0; r < (options.qaInPretrain ?? 0); r++) {
    for (const e of train) {
      for (const lang of LANGS) {
        const lines = shuffle(pre, ATTRIBUTES).map((a) => `${fill(pick(pre, WORLD[a].questions[lang]), e.name[lang])}\n${answerOf(e, a, lang)}`)
        pretrain.push({ text: lines.join("\n") })
      }
    }
  }
  const fillers = Math.round(pretrain.length * fillerFraction)
  for (let i = 0; i < fillers; i++) pretrain.push({ text: fillerDocument(pre, LANGS[i % LANGS.length]!) })

  // SFT: every question template for every train fact, some two-question chats, chit-chat.
  const sftRng = stream(seed, "sft")
  const sft: SftRecord[] = []
  for (const e of train) {
    for (const lang of LANGS) {
      for (const a of ATTRIBUTES) {
        for (const q of WORLD[a].questions[lang]) sft.push({ conversations: [turn("user", fill(q, e.name[lang])), turn("assistant", answerOf(e, a, lang))] })
      }
      const [a1, a2] = shuffle(sftRng, ATTRIBUTES)
      sft.push({
        conversations: [a1!, a2!].flatMap((a) => [
          turn("user", fill(pick(sftRng, WORLD[a].questions[lang]), e.name[lang])),
          turn("assistant", answerOf(e, a, lang)),
        ]),
      })
    }
  }
  const echoRng = stream(seed, "echo")
  for (const lang of LANGS) {
    for (let i = 0; i < echoChats; i++) {
      const name = echoName(echoRng, lang)
      const [q, a] = ECHO[lang][i % ECHO[lang].length]!
      sft.push({ conversations: [turn("user", fill(q, name)), turn("assistant", fill(a, name))] })
    }
  }
  const ctxRng = stream(seed, "context")
  for (const lang of LANGS) {
    for (let i = 0; i < (options.contextChats ?? 0); i++) {
      const name = echoName(ctxRng, lang)
      const a = ATTRIBUTES[i % ATTRIBUTES.length]!
      const value = pick(ctxRng, WORLD[a].values)[lang]
      const stated = fill(pick(ctxRng, WORLD[a].statements[lang].slice(1)), name, value)
      const asked = fill(pick(ctxRng, WORLD[a].questions[lang]), name)
      const reply = options.answerStyle === "value" ? `${value}${lang === "zh" ? "。" : "."}` : lead(lang) + fill(WORLD[a].statements[lang][0]!, name, value)
      sft.push({ conversations: [turn("user", `${stated}${lang === "zh" ? "" : " "}${asked}`), turn("assistant", reply)] })
    }
  }
  for (let r = 0; r < chitchatRepeats; r++) {
    for (const lang of LANGS) for (const [q, a] of CHITCHAT[lang]) sft.push({ conversations: [turn("user", q), turn("assistant", a)] })
  }

  // DPO: one pair per train fact and language; rejected = the same sentence with another value.
  const dpoRng = stream(seed, "dpo")
  const dpo: DpoRecord[] = []
  for (const e of train) {
    for (const lang of LANGS) {
      for (const a of ATTRIBUTES) {
        const user = turn("user", fill(pick(dpoRng, WORLD[a].questions[lang]), e.name[lang]))
        const k = WORLD[a].values.length
        const wrong = (e.facts[a] + 1 + Math.floor(dpoRng() * (k - 1))) % k
        dpo.push({ chosen: [user, turn("assistant", answerOf(e, a, lang))], rejected: [user, turn("assistant", answerOf(e, a, lang, wrong))] })
      }
    }
  }

  // Questions: one per (person, attribute, language); templates rotate so each is used evenly.
  const questionsFor = (people: readonly Entity[]): Question[] =>
    people.flatMap((e, i) =>
      LANGS.flatMap((lang) =>
        ATTRIBUTES.map((a, j) => {
          const qs = WORLD[a].questions[lang]
          return makeQuestion(e, a, lang, qs[(i + j) % qs.length]!)
        }),
      ),
    )

  const data = {
    seed,
    entities,
    pretrain: shuffle(pre, pretrain),
    sft: shuffle(sftRng, sft),
    dpo: shuffle(dpoRng, dpo),
    heldOut: questionsFor(held),
    trainQuestions: questionsFor(train),
  }
  return { ...data, stats: demoStats(data) }
}

// ---------------------------------------------------------------------------------------------
// Sizes and files

const setStats = (texts: readonly string[]): SetStats => {
  let characters = 0
  let bytes = 0
  let longestCharacters = 0
  for (const t of texts) {
    const n = [...t].length
    characters += n
    bytes += Buffer.byteLength(t, "utf8")
    longestCharacters = Math.max(longestCharacters, n)
  }
  return { documents: texts.length, characters, bytes, longestCharacters }
}

const chatText = (turns: readonly ChatTurn[]): string => turns.map((t) => t.content).join("\n")

/** Corpus sizes: documents, characters (code points) and UTF-8 bytes of the text fields. */
export const demoStats = (data: Omit<DemoData, "stats" | "seed">): DemoStats => ({
  entities: data.entities.length,
  trainEntities: data.entities.filter((e) => e.split === "train").length,
  heldOutEntities: data.entities.filter((e) => e.split === "heldout").length,
  facts: data.entities.length * ATTRIBUTES.length,
  pretrain: setStats(data.pretrain.map((r) => r.text)),
  sft: setStats(data.sft.map((r) => chatText(r.conversations))),
  dpo: setStats(data.dpo.map((r) => `${chatText(r.chosen)}\n${chatText(r.rejected)}`)),
  heldOutQuestions: data.heldOut.length,
  trainQuestions: data.trainQuestions.length,
})

export const DEMO_FILES = {
  pretrain: "pretrain.jsonl",
  sft: "sft.jsonl",
  dpo: "dpo.jsonl",
  heldOut: "heldout.jsonl",
} as const

export const toJsonl = (rows: readonly unknown[]): string => rows.map((r) => JSON.stringify(r)).join("\n") + (rows.length ? "\n" : "")

/** Writes the four JSONL files into `dir` (created if missing); returns their paths. */
export const writeDemoData = (dir: string, data: DemoData): { readonly [K in keyof typeof DEMO_FILES]: string } => {
  mkdirSync(dir, { recursive: true })
  const paths = {
    pretrain: join(dir, DEMO_FILES.pretrain),
    sft: join(dir, DEMO_FILES.sft),
    dpo: join(dir, DEMO_FILES.dpo),
    heldOut: join(dir, DEMO_FILES.heldOut),
  }
  writeFileAtomic(paths.pretrain, toJsonl(data.pretrain))
  writeFileAtomic(paths.sft, toJsonl(data.sft))
  writeFileAtomic(paths.dpo, toJsonl(data.dpo))
  writeFileAtomic(paths.heldOut, toJsonl(data.heldOut))
  return paths
}
