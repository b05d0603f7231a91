// gen-sample-data.mjs — writes the bundled demo dataset resources/datasets/promptcblue-demo/{train,dev,test}.json
// in PromptCBLUE layout (JSON Lines: {"input","target","type","answer_choices","sample_id"} per line).
//
// Everything here is ORIGINAL text composed for this project from the hand-written pieces below; no real
// dataset is copied. Task A ("cls") imitates clinical-trial eligibility-criterion classification (the
// CHIP-CTC subset the project started from); task B ("gen") is short extraction / normalisation.
//
// Deterministic: a seeded PRNG (mulberry32), no Math.random, no clock. Re-running writes byte-identical
// files.   node scripts/gen-sample-data.mjs           write the files (and print a summary)
//          node scripts/gen-sample-data.mjs --check   exit 1 if the files on disk differ from what it would write
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT_DIR = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
const SPLITS = [
  ['train', 800],
  ['dev', 150],
  ['test', 150],
];
const GEN_SHARE = 0.2; // share of "gen" records in each split
const SEED = 'llms-train/promptcblue-demo/v1';

// ---------------------------------------------------------------------------------------------------------
// PRNG helpers

function fnv1a(str) {
  let h = 0x811c9dc5;
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let rng = mulberry32(fnv1a(SEED));
const rnd = () => rng();
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const chance = (p) => rnd() < p;
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
function shuffle(arr) {
  for (let i = arr.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [arr[i], arr[j]] = [arr[j], arr[i]];
  }
  return arr;
}

// ---------------------------------------------------------------------------------------------------------
// Hand-written pieces

const CATEGORIES = [
  '疾病', '年龄', '性别', '药物', '实验室检查', '过敏耐受',
  '怀孕相关', '治疗或手术', '知情同意', '参与其他试验', '体征', '吸烟状况',
];
// Relative weights of the classes (categories with a naturally small vocabulary get a little less).
const CLASS_WEIGHT = {
  疾病: 1.1, 年龄: 1, 性别: 0.7, 药物: 1.1, 实验室检查: 1.1, 过敏耐受: 0.9,
  怀孕相关: 0.9, 治疗或手术: 1, 知情同意: 0.8, 参与其他试验: 0.8, 体征: 1, 吸烟状况: 0.8,
};

const CLS_TEMPLATES = [
  '判断下面临床试验筛选标准的类别：\n{s}\n选项：{c}\n答：',
  '以下是一条临床试验的入组或排除标准，请从给定类别中选出它所属的一项。\n标准：{s}\n候选类别：{c}\n答：',
  '{s}\n这条临床试验筛选标准属于哪一类？选项：{c}\n答：',
  '请对下面的临床试验筛选标准进行分类。\n文本：{s}\n类别选项：{c}\n答案：',
  '临床试验筛选标准分类任务：\n{s}\n请在以下类别中选择一个：{c}\n答：',
  '阅读这条临床试验的受试者筛选条件，判断它的主题类别。\n{s}\n可选类别：{c}\n答：',
  '确定下面这句临床试验入排标准描述的是哪类信息：\n“{s}”\n选项：{c}\n答：',
  '下面这句话出自某临床试验方案的受试者选择部分，它属于哪个类别？\n{s}\n类型选项：{c}\n答：',
];

const GEN_TEMPLATES = {
  disease: [
    '找出下面这条临床试验筛选标准中提到的疾病名称，只写名称。\n{s}\n答：',
    '请从以下临床试验入排标准文本中抽取疾病实体，只输出疾病名：\n{s}\n答：',
    '下面这条临床试验筛选标准涉及哪种疾病？请写出疾病名称。\n{s}\n答：',
  ],
  drug: [
    '下面这条临床试验筛选标准提到了哪种药物？请只回答药物通用名。\n{s}\n答：',
    '从下面这句临床试验入排标准中抽取药物名称，只输出通用名：\n{s}\n答：',
    '请指出以下临床试验筛选标准中出现的药物（只写通用名）：\n{s}\n药物：',
  ],
  lab: [
    '请将下面的检验指标描述改写为规范写法（指标+比较符号+数值+单位）：\n{s}\n答：',
    '把这段口语化的实验室检查结果描述转换为标准表达式（指标+比较符+数值+单位）：\n{s}\n答：',
    '检验指标标准化：请把下面的描述写成“指标+比较符+数值+单位”的形式。\n{s}\n答：',
  ],
};

// Diseases, by group (the group decides which sentence frames fit).
const DISEASES = {
  tumor: [
    '非小细胞肺癌', '小细胞肺癌', '乳腺癌', '结直肠癌', '胃癌', '肝细胞癌', '胰腺导管腺癌', '食管鳞状细胞癌',
    '卵巢癌', '前列腺癌', '弥漫大B细胞淋巴瘤', '多发性骨髓瘤', '鼻咽癌', '肾细胞癌', '甲状腺乳头状癌', '宫颈癌',
  ],
  chronic: [
    '2型糖尿病', '1型糖尿病', '原发性高血压', '慢性阻塞性肺疾病', '支气管哮喘', '慢性肾脏病', '肝硬化',
    '慢性心力衰竭', '类风湿关节炎', '系统性红斑狼疮', '强直性脊柱炎', '溃疡性结肠炎', '克罗恩病', '银屑病',
    '甲状腺功能亢进症', '痛风', '骨质疏松症', '心房颤动', '特发性肺纤维化', '膝骨关节炎', '慢性萎缩性胃炎',
  ],
  infect: ['慢性乙型肝炎', '丙型肝炎', '活动性肺结核', '人类免疫缺陷病毒感染', '梅毒', '带状疱疹', '侵袭性真菌感染'],
  acute: ['急性心肌梗死', '缺血性脑卒中', '深静脉血栓形成', '肺栓塞', '不稳定型心绞痛', '短暂性脑缺血发作', '急性胰腺炎'],
  neuro: ['精神分裂症', '抑郁症', '双相情感障碍', '癫痫', '帕金森病', '阿尔茨海默病', '多发性硬化', '重症肌无力', '偏头痛'],
};

// Generic drug names by class (no brand names).
const DRUGS = {
  抗血小板药物: ['阿司匹林', '氯吡格雷', '替格瑞洛', '西洛他唑'],
  抗凝药物: ['华法林', '利伐沙班', '达比加群酯', '依诺肝素', '阿哌沙班'],
  口服降糖药: ['二甲双胍', '格列美脲', '西格列汀', '达格列净', '阿卡波糖'],
  调脂药物: ['阿托伐他汀', '瑞舒伐他汀', '依折麦布', '非诺贝特'],
  糖皮质激素: ['泼尼松', '甲泼尼龙', '地塞米松', '氢化可的松'],
  免疫抑制剂: ['环孢素', '他克莫司', '吗替麦考酚酯', '甲氨蝶呤', '硫唑嘌呤'],
  质子泵抑制剂: ['奥美拉唑', '泮托拉唑', '雷贝拉唑', '艾司奥美拉唑'],
  非甾体抗炎药: ['布洛芬', '双氯芬酸', '塞来昔布', '萘普生', '美洛昔康'],
  抗菌药物: ['阿莫西林', '左氧氟沙星', '头孢曲松', '阿奇霉素', '利福平', '克拉霉素'],
  抗抑郁药: ['氟西汀', '舍曲林', '帕罗西汀', '艾司西酞普兰'],
  抗癫痫药: ['卡马西平', '丙戊酸钠', '拉莫三嗪', '左乙拉西坦'],
  降压药物: ['氨氯地平', '美托洛尔', '缬沙坦', '依那普利', '氢氯噻嗪'],
};
const DOSES = {
  阿司匹林: ['100 mg/d', '300 mg/d'], 泼尼松: ['10 mg/d', '20 mg/d', '7.5 mg/d'], 甲泼尼龙: ['8 mg/d', '16 mg/d'],
  二甲双胍: ['1000 mg/d', '1500 mg/d'], 甲氨蝶呤: ['10 mg/周', '15 mg/周'], 阿托伐他汀: ['20 mg/d', '40 mg/d'],
  地塞米松: ['1.5 mg/d', '4 mg/d'], 布洛芬: ['800 mg/d', '1200 mg/d'],
};

const SURGERIES = [
  '冠状动脉旁路移植术', '经皮冠状动脉介入治疗', '心脏瓣膜置换术', '导管射频消融术', '全髋关节置换术',
  '全膝关节置换术', '腹腔镜胆囊切除术', '胃大部切除术', '减重手术', '白内障摘除术', '开颅手术',
  '根治性前列腺切除术', '肺叶切除术', '甲状腺全切术', '重大外科手术', '胸腹部大手术', '脊柱融合术',
];
const THERAPIES = [
  '全身化疗', '胸部放射治疗', '盆腔放射治疗', '造血干细胞移植', '肾移植', '肝移植', '血液透析', '腹膜透析',
  '血浆置换', '体外膜肺氧合', '有创机械通气', '电休克治疗', '经颅磁刺激治疗', '高压氧治疗', '同步放化疗',
  '介入栓塞治疗', '静脉溶栓治疗',
];
const ALLERGENS = [
  '青霉素类抗生素', '头孢菌素类药物', '磺胺类药物', '碘对比剂', '钆对比剂', '乳胶制品', '鸡蛋蛋白', '明胶',
  '人源化单克隆抗体', '聚乙二醇', '局部麻醉药', '酰胺类麻醉药', '花生等坚果类食物', '海鲜类食物',
];

// Laboratory tests. names: how a criterion may write the test; spoken: units as written in prose.
// kind 'uln' = expressed as a multiple of the upper limit of normal. norm: short name used in the
// normalised form (task B); noNorm: not used for task B (target would be too long).
const LABS = [
  { names: ['血红蛋白', '血红蛋白（Hb）', 'Hb'], norm: '血红蛋白', unit: 'g/L', spoken: ['克/升', '克每升', 'g/L'], values: ['80', '90', '100', '110'], dir: 'low' },
  { names: ['中性粒细胞绝对计数', '中性粒细胞绝对计数（ANC）', 'ANC'], norm: 'ANC', unit: '×10^9/L', spoken: ['×10^9/L', '×10⁹/L'], values: ['1.0', '1.5', '2.0'], dir: 'low' },
  { names: ['血小板计数', '血小板（PLT）', 'PLT'], norm: 'PLT', unit: '×10^9/L', spoken: ['×10^9/L', '×10⁹/L'], values: ['50', '75', '80', '100'], dir: 'low' },
  { names: ['白细胞计数', '白细胞（WBC）', 'WBC'], norm: 'WBC', unit: '×10^9/L', spoken: ['×10^9/L', '×10⁹/L'], values: ['3.0', '3.5', '4.0'], dir: 'low' },
  { names: ['丙氨酸氨基转移酶（ALT）', '谷丙转氨酶', 'ALT'], norm: 'ALT', kind: 'uln', values: ['1.5', '2', '2.5', '3', '5'], dir: 'high' },
  { names: ['天门冬氨酸氨基转移酶（AST）', '谷草转氨酶', 'AST'], norm: 'AST', kind: 'uln', values: ['1.5', '2', '2.5', '3', '5'], dir: 'high' },
  { names: ['总胆红素', '血清总胆红素（TBIL）', 'TBIL'], norm: 'TBIL', kind: 'uln', values: ['1.5', '2', '3'], dir: 'high' },
  { names: ['血肌酐', '血清肌酐（Scr）', 'Scr'], norm: '血肌酐', unit: 'μmol/L', spoken: ['微摩尔/升', '微摩尔每升', 'μmol/L'], values: ['133', '150', '177'], dir: 'high' },
  { names: ['肌酐清除率', '肌酐清除率（CrCl）', 'CrCl'], norm: 'CrCl', unit: 'mL/min', spoken: ['毫升/分钟', '毫升每分钟', 'mL/min'], values: ['30', '45', '50', '60'], dir: 'low' },
  { names: ['估算肾小球滤过率（eGFR）', 'eGFR'], norm: 'eGFR', unit: 'mL/min/1.73m²', spoken: ['mL/min/1.73m²'], values: ['30', '45', '60'], dir: 'low', noNorm: true },
  { names: ['糖化血红蛋白', '糖化血红蛋白（HbA1c）', 'HbA1c'], norm: 'HbA1c', unit: '%', spoken: ['%'], values: ['6.5', '7.0', '7.5', '8.0', '9.0', '10.0', '10.5'], dir: 'both' },
  { names: ['空腹血糖', '空腹血浆葡萄糖（FPG）', 'FPG'], norm: '空腹血糖', unit: 'mmol/L', spoken: ['毫摩尔/升', '毫摩尔每升', 'mmol/L'], values: ['7.0', '11.1', '13.3', '13.9'], dir: 'high' },
  { names: ['国际标准化比值（INR）', 'INR'], norm: 'INR', unit: '', spoken: [''], values: ['1.5', '2.0', '3.0'], dir: 'high' },
  { names: ['血钾', '血清钾'], norm: '血钾', unit: 'mmol/L', spoken: ['毫摩尔/升', 'mmol/L'], values: ['3.0', '3.5', '5.5'], dir: 'both' },
  { names: ['甘油三酯', '甘油三酯（TG）', 'TG'], norm: 'TG', unit: 'mmol/L', spoken: ['毫摩尔/升', 'mmol/L'], values: ['2.3', '4.5', '5.6'], dir: 'high' },
  { names: ['低密度脂蛋白胆固醇（LDL-C）', 'LDL-C'], norm: 'LDL-C', unit: 'mmol/L', spoken: ['毫摩尔/升', 'mmol/L'], values: ['1.8', '2.6', '3.4', '4.9'], dir: 'both' },
  { names: ['促甲状腺激素（TSH）', 'TSH'], norm: 'TSH', unit: 'mIU/L', spoken: ['mIU/L', '毫国际单位/升'], values: ['0.1', '4.5', '10'], dir: 'both' },
  { names: ['血清白蛋白', '白蛋白'], norm: '白蛋白', unit: 'g/L', spoken: ['克/升', 'g/L'], values: ['28', '30', '35'], dir: 'low' },
  { names: ['血尿酸', '血清尿酸'], norm: '血尿酸', unit: 'μmol/L', spoken: ['微摩尔/升', 'μmol/L'], values: ['420', '480', '540'], dir: 'high' },
];

// ---------------------------------------------------------------------------------------------------------
// Small composition helpers

const allDiseases = Object.values(DISEASES).flat();
const drugEntries = Object.entries(DRUGS).flatMap(([cls, names]) => names.map((name) => ({ name, cls })));

function timeWindow(scale = 'any') {
  const weeks = () => pick([`筛选前${pick([2, 4, 6, 8, 12])}周内`, `首次给药前${pick([2, 4, 8])}周内`, `随机化前${pick([14, 28, 30])}天内`]);
  const months = () => pick([`入组前${pick([1, 3, 6, 12])}个月内`, `筛选前${pick([3, 6])}个月内`, `近${pick([3, 6, 12])}个月内`, `过去${pick([6, 12])}个月内`]);
  const years = () => pick([`过去${pick([1, 2, 3, 5])}年内`, `筛选前${pick([1, 2, 5])}年内`]);
  if (scale === 'short') return chance(0.6) ? weeks() : months();
  if (scale === 'long') return chance(0.6) ? months() : years();
  return pick([weeks, months, years])();
}
// Trailing variation as found in real protocols: nothing, a list separator, a full stop, or "者" (…的人).
const ending = () => pick(['', '', '', '；', '。', '者', '']);
function fixEnding(s) {
  // drop a "者" that would double an earlier one ("现吸烟者（…）者") or follow punctuation
  const m = /^(.*)者$/s.exec(s);
  if (m && (m[1].includes('者') || /[。；]$/.test(m[1]))) return m[1];
  return s;
}
// Sentences that differ only in trailing punctuation / "者" count as the same sentence.
const sentenceKey = (s) => s.replace(/[；。者]+$/, '');

const OPS = { lt: ['<', '＜', '低于'], le: ['≤', '不超过', '不高于'], gt: ['>', '＞', '高于', '超过'], ge: ['≥', '不低于'] };
function formalLab(lab, opKey) {
  const name = pick(lab.names);
  const v = pick(lab.values);
  const op = pick(OPS[opKey]);
  if (lab.kind === 'uln') {
    return pick([`${name}${op}${v}×ULN`, `${name}${op}${v}倍正常值上限`, `${name}${op}正常值上限的${v}倍`]);
  }
  const sep = lab.unit && /^[A-Za-zμm×]/.test(lab.unit) && chance(0.5) ? ' ' : '';
  return `${name}${op}${v}${sep}${lab.unit}`;
}
const labOp = (lab, exclusion) => {
  const low = lab.dir === 'low' || (lab.dir === 'both' && chance(0.5));
  // inclusion: value adequate (>= for "low-bad" tests); exclusion: value abnormal
  if (exclusion) return low ? pick(['lt', 'le']) : pick(['gt', 'ge']);
  return low ? 'ge' : 'le';
};

// ---------------------------------------------------------------------------------------------------------
// Sentence generators: each returns { text, entity? , entityKind? }.

const GEN = {
  疾病() {
    const group = pick(['tumor', 'chronic', 'chronic', 'infect', 'acute', 'neuro']);
    const d = pick(DISEASES[group]);
    const general = [
      () => `既往有${d}病史`,
      () => `合并${d}，且目前病情未得到有效控制`,
      () => `患有${d}且研究者认为不适合参加本研究`,
      () => `筛选时存在${d}的临床证据`,
      () => `已确诊为${d}的${pick(['门诊', '住院', '成年', ''])}患者`,
      () => `伴有${pick(['严重的', '未控制的', '需要住院治疗的', '中重度'])}${d}`,
      () => `有${d}病史或目前正处于${d}${pick(['发作期', '活动期', '急性加重期'])}`,
      () => `${pick(['明确诊断为', '临床诊断为', '经专科医师确诊的'])}${d}`,
      () => `合并${d}等${pick(['可能影响研究评估', '可能影响受试者安全', '研究者判断不宜入组'])}的疾病`,
    ];
    const byGroup = {
      tumor: [
        () => `经组织学或细胞学确诊的${pick(['晚期', '局部晚期', '转移性', '复发或难治性', 'Ⅲ～Ⅳ期', '不可切除的'])}${d}`,
        () => `病理确诊为${d}，且${pick(['既往未接受过系统治疗', '至少有一个可测量病灶', '预计生存期≥3个月'])}`,
        () => `${pick([3, 5])}年内曾诊断${d}以外的其他恶性肿瘤`,
      ],
      chronic: [
        () => `符合现行诊疗指南中${d}的诊断标准，病程≥${pick([3, 6, 12])}个月`,
        () => `${d}病程${pick(['超过1年', '不少于6个月', '在3个月以上'])}`,
        () => `确诊${d}${pick([1, 2, 5, 10])}年以上`,
      ],
      infect: [
        () => `${d}${pick(['处于活动期', '尚未治愈', '需要抗感染治疗'])}`,
        () => `筛选时合并${d}`,
      ],
      acute: [
        () => `${timeWindow('long')}发生过${d}`,
        () => `${timeWindow('long')}有${d}病史`,
        () => `近期（${pick([3, 6])}个月内）因${d}住院`,
      ],
      neuro: [
        () => `符合DSM-5或ICD-10中${d}的诊断标准`,
        () => `既往或目前患有${d}，研究者判断可能影响依从性`,
      ],
    };
    const f = chance(0.45) ? pick(byGroup[group]) : pick(general);
    let text = f();
    if (!text.endsWith('者')) text = fixEnding(text + ending());
    return { text, entity: d, entityKind: 'disease' };
  },

  年龄() {
    const a = pick([14, 16, 18, 18, 18, 20, 22, 25, 30, 35, 40, 45, 50, 55, 60]);
    const b = pick([45, 50, 55, 60, 65, 65, 70, 75, 75, 80, 85]);
    const lo = Math.min(a, b - 5);
    const sui = pick(['岁', '周岁']);
    const dash = pick(['～', '-', '至', '到', '~']);
    const f = pick([
      () => `年龄${lo}${dash}${b}${sui}`,
      () => `年龄${lo}${dash}${b}${sui}（含${lo}${sui}和${b}${sui}）`,
      () => `${pick(['筛选时', '入组时', '随机时'])}年龄${pick(['≥', '大于或等于', '不小于'])}${lo}${sui}`,
      () => `年龄在${lo}${sui}至${b}${sui}之间`,
      () => `年龄${pick(['>', '大于', '超过'])}${b}${sui}`,
      () => `年龄${pick(['<', '小于', '未满'])}${lo}${sui}`,
      () => `${lo}${sui}${pick(['及以上', '以上'])}的${pick(['患者', '受试者', '成年人', '门诊患者'])}`,
      () => `受试者年龄介于${lo}与${b}${sui}之间`,
      () => `年龄不超过${b}${sui}的${pick(['患者', '受试者', '住院患者'])}`,
      () => `${pick(['筛选时', '入组时'])}年龄为${lo}${dash}${b}${sui}`,
      () => `年龄${lo}${sui}以上且${b}${sui}以下`,
      () => `${pick(['儿童', '青少年'])}受试者：${pick([2, 6, 8, 12])}${dash}${pick([12, 14, 17])}${sui}`,
      () => `年龄≥${pick([60, 65, 70, 75, 80])}${sui}的老年${pick(['患者', '受试者', '人群'])}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },

  性别() {
    const pop = pick(['受试者', '患者', '健康志愿者', '门诊患者', '住院患者', '成年人', '健康受试者', '参与者']);
    const one = pick(['男性', '女性']);
    const f = pick([
      () => `性别：${pick(['男性', '女性', '男女不限', '不限'])}`,
      () => `${pick(['男性或女性', '男女均可', '性别不限', '男女不限'])}${pick(['', '，比例不限', '，男女比例不作要求', '，不限男女比例'])}`,
      () => `${one}${pop}`,
      () => `仅限${one}${pop}`,
      () => `${pop}须为${one}`,
      () => `${pop}性别${pick(['不限', '为男性', '为女性'])}`,
      () => `${pick(['男性和女性', '男性或女性', '男女'])}${pop}均可入选`,
      () => `纳入${pick(['男性', '女性', '男性或女性'])}${pop}`,
      () => `不限性别的${pop}`,
      () => `${pick(['招募', '入选'])}${pick(['男性', '女性'])}${pop}`,
    ]);
    return { text: fixEnding(f() + pick(['', '', '；', '。'])) };
  },

  药物() {
    const { name: drug, cls } = pick(drugEntries);
    const withEntity = [
      () => `${timeWindow('short')}使用过${drug}`,
      () => `${timeWindow('short')}接受过${drug}治疗`,
      () => `目前正在服用${drug}且不能停药`,
      () => `${timeWindow('short')}使用过${cls}（如${drug}等）`,
      () => `试验期间需要合并使用${drug}或其他${cls}`,
      () => `稳定使用${drug}至少${pick([4, 8, 12])}周，且研究期间剂量保持不变`,
      () => `长期（连续${pick([7, 14, 30])}天以上）使用${drug}`,
      () => `正在接受${drug}${DOSES[drug] ? pick(DOSES[drug]) : ''}治疗`,
      () => `需要在研究期间持续服用${drug}`,
      () => `${timeWindow('short')}因其他疾病使用过${drug}`,
      () => `筛选前已规律服用${drug}${pick(['≥3个月', '至少6个月', '超过4周'])}`,
    ];
    const noEntity = [
      () => `${timeWindow('short')}使用过${cls}`,
      () => `需要长期使用${cls}的患者`,
      () => `${timeWindow('short')}使用过CYP3A4${pick(['强抑制剂', '强诱导剂', '强抑制剂或强诱导剂'])}`,
      () => `${timeWindow('short')}使用过任何中草药或中成药制剂`,
      () => `${timeWindow('short')}接种过${pick(['减毒活疫苗', '任何疫苗'])}`,
    ];
    if (chance(0.2)) return { text: fixEnding(pick(noEntity)() + ending()) };
    return { text: fixEnding(pick(withEntity)() + ending()), entity: drug, entityKind: 'drug' };
  },

  实验室检查() {
    const exclusion = chance(0.6);
    const lab = pick(LABS);
    const other = pick(LABS.filter((l) => l !== lab));
    const f = pick([
      () => formalLab(lab, labOp(lab, exclusion)),
      () => `${pick(['筛选期', '筛选时', '随机前'])}${formalLab(lab, labOp(lab, exclusion))}`,
      () => `${pick(['实验室检查提示', '筛选期实验室检查：', '检验结果显示'])}${formalLab(lab, labOp(lab, exclusion))}`,
      () => `${formalLab(lab, labOp(lab, exclusion))}${pick(['或', '，或', '且'])}${formalLab(other, labOp(other, exclusion))}`,
      () => `骨髓功能${pick(['基本正常', '充足'])}：${formalLab(LABS[1], 'ge')}，${formalLab(LABS[2], 'ge')}，${formalLab(LABS[0], 'ge')}`,
      () => `肝功能异常：${formalLab(LABS[4], pick(['gt', 'ge']))}或${formalLab(LABS[5], pick(['gt', 'ge']))}`,
      () => {
        const renal = pick([LABS[7], LABS[8], LABS[9]]);
        return `肾功能不全，定义为${formalLab(renal, labOp(renal, true))}`;
      },
      () => `${pick(lab.names)}检测结果异常且经研究者判断具有临床意义`,
      () => `乙肝表面抗原（HBsAg）阳性且HBV DNA${pick(['≥', '>'])}${pick(['500', '1000', '2000', '10^4'])} IU/mL`,
      () => `尿常规${pick(['尿蛋白', '尿潜血'])}${pick(['≥++', '≥2+', '阳性（++及以上）'])}${pick(['', '，且24小时尿蛋白定量>1.0 g'])}`,
      () => `心肌酶谱或肌钙蛋白${pick(['超过正常值上限', '高于正常范围'])}`,
    ]);
    return { text: fixEnding(f() + pick(['', '', '；', '。'])) };
  },

  过敏耐受() {
    const d = pick(drugEntries);
    const a = pick(ALLERGENS);
    const withDrug = [
      () => `已知对${d.name}或其任何辅料过敏`,
      () => `对${d.name}有过敏史`,
      () => `既往不能耐受${d.name}治疗`,
      () => `曾因${pick(['严重不良反应', '皮疹等过敏反应', '胃肠道反应'])}无法耐受${d.name}`,
      () => `对${d.name}或同类${d.cls}过敏`,
      () => `既往使用${d.name}后出现${pick(['过敏性休克', '严重皮疹', '血管性水肿', '荨麻疹'])}`,
    ];
    const other = [
      () => `对${a}有过敏史`,
      () => `既往对${a}发生过严重过敏反应（如过敏性休克）`,
      () => `过敏体质，${pick(['对两种或以上药物或食物过敏', '有多种药物过敏史', '曾对多种食物过敏'])}`,
      () => `已知对试验用药物${pick(['的活性成分', '或其辅料', '所含成分'])}过敏`,
      () => `对${d.cls}类药物过敏或不耐受`,
      () => `不能耐受${pick(['静脉穿刺', '多次采血', '磁共振检查所需的对比剂', a])}`,
      () => `对${a}或${pick(ALLERGENS.filter((x) => x !== a))}过敏`,
    ];
    if (chance(0.45)) return { text: fixEnding(pick(withDrug)() + ending()), entity: d.name, entityKind: 'drug' };
    return { text: fixEnding(pick(other)() + ending()) };
  },

  怀孕相关() {
    const who = pick(['育龄期女性', '有生育能力的女性', '育龄妇女', '女性受试者', '有生育潜力的女性受试者']);
    const contra = pick(['采取有效的避孕措施', '使用可靠的避孕方法', '采取医学认可的避孕措施', '严格避孕']);
    const n = pick([1, 3, 6, 12]);
    const f = pick([
      () => `${pick(['妊娠期或哺乳期女性', '孕妇或哺乳期妇女', '处于妊娠或哺乳期的女性'])}`,
      () => `${who}${pick(['筛选时', '首次给药前72小时内', '随机前'])}${pick(['血', '尿', '血或尿'])}妊娠试验阳性`,
      () => `计划在研究期间或末次用药后${n}个月内妊娠`,
      () => `${who}不同意在研究期间及末次给药后${n}个月内${contra}`,
      () => `${who}同意在试验期间${contra}`,
      () => `正在哺乳且不愿停止哺乳`,
      () => `研究期间及结束后${n}个月内有${pick(['生育计划', '生育或捐精计划', '备孕计划'])}`,
      () => `孕周${pick([8, 10, 12, 16])}～${pick([20, 24, 28, 32])}周的单胎妊娠孕妇`,
      () => `男性受试者的${pick(['配偶', '伴侣'])}在研究期间计划怀孕`,
      () => `${pick(['筛选前', '近'])}${pick([3, 6])}个月内有${pick(['流产', '分娩', '终止妊娠'])}史`,
      () => `${who}${pick(['处于备孕阶段', '妊娠试验结果待定'])}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },

  治疗或手术() {
    const s = pick(SURGERIES);
    const t = pick(THERAPIES);
    const f = pick([
      () => `${timeWindow('any')}接受过${s}`,
      () => `既往接受过${t}`,
      () => `计划在研究期间接受${s}`,
      () => `${timeWindow('short')}接受过${t}`,
      () => `正在接受${pick(['血液透析', '腹膜透析', '持续肾脏替代治疗'])}${pick(['', '治疗', '维持治疗'])}`,
      () => `曾接受${pick(['实体器官', '肾脏', '肝脏', '心脏'])}移植或${pick(['骨髓', '造血干细胞'])}移植`,
      () => `${timeWindow('short')}接受过放射治疗（${pick(['姑息性放疗除外', '骨转移灶局部放疗除外'])}）`,
      () => `既往接受过≥${pick([2, 3])}线系统性抗肿瘤治疗`,
      () => `需要${pick(['有创机械通气', '体外膜肺氧合', '血管活性药物和机械通气'])}维持生命体征`,
      () => `${s}后${pick(['未满', '不足'])}${pick([4, 6, 8, 12])}周或伤口尚未愈合`,
      () => `预计在研究期间需要进行${pick(['择期手术', '外科手术', s])}`,
      () => `${timeWindow('long')}曾行${s}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },

  知情同意() {
    const who = pick(['受试者', '患者', '受试者本人', '受试者或其法定代理人', '患者或其监护人', '患者本人或法定监护人']);
    const f = pick([
      () => `${who}${pick(['自愿参加本研究', '充分了解本研究的目的和风险后自愿参加', '经研究者详细说明后同意参加本试验', '理解研究内容并自愿参与'])}` +
        `${pick(['，并签署知情同意书', '，并签署书面知情同意书', '，签署并注明日期的知情同意书', '，能够亲自签署知情同意书'])}` +
        `${pick(['', '', '，愿意遵守研究方案要求', '，能按时完成随访', '，依从性良好'])}`,
      () => `${who}${pick(['无法理解', '拒绝签署', '不能或不愿签署'])}知情同意书`,
      () => `${pick(['因认知障碍', '因语言沟通障碍', '因文化程度所限'])}不能${pick(['给予', '提供'])}${pick(['书面', '有效的', ''])}知情同意`,
      () => `${pick(['在进行任何研究相关操作前', '筛选开始前', '入组前'])}${who}已签署知情同意书`,
      () => `${who}${pick(['同意', '愿意'])}参加本研究并签署${pick(['经伦理委员会批准的', '最新版本的', ''])}知情同意书`,
    ]);
    return { text: fixEnding(f() + pick(['', '', '；', '。'])) };
  },

  参与其他试验() {
    const kind = pick(['药物', '医疗器械', '干预性', '任何', '抗肿瘤药物', '疫苗']);
    const f = pick([
      () => `${timeWindow('long')}参加过其他${kind}临床试验`,
      () => `正在参加其他${kind}临床研究`,
      () => `${pick(['筛选前', '入组前'])}${pick([1, 3, 6])}个月内（或试验药物的5个半衰期内，以较长者为准）参加过其他临床试验`,
      () => `既往曾参加过本研究或已被随机分组`,
      () => `同时参加其他${pick(['干预性研究', '临床试验'])}者（${pick(['观察性研究除外', '仅处于随访期者除外'])}）`,
      () => `${timeWindow('long')}作为受试者参加过${pick(['任何', '其他', '一项以上'])}${pick(['药物', '器械'])}临床试验`,
      () => `${pick(['研究期间', '本试验结束前'])}计划参加其他${kind}临床试验`,
      () => `${timeWindow('long')}使用过其他${pick(['研究性药物', '试验用药物', '未上市的试验器械'])}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },

  体征() {
    const f = pick([
      () => `${pick(['静息坐位', '筛选时', '静息状态下', ''])}收缩压≥${pick([140, 150, 160, 180])} mmHg${pick(['和/或', '或'])}舒张压≥${pick([90, 95, 100, 110])} mmHg`,
      () => `血压${pick(['控制不佳', '未得到控制'])}（${pick(['收缩压>160 mmHg', '舒张压>100 mmHg', '收缩压≥150 mmHg'])}）`,
      () => `体重指数（BMI）在${pick(['18', '18.5', '19'])}～${pick(['24', '26', '28', '30', '32'])} kg/m²之间`,
      () => `BMI${pick(['≥', '>', '<'])}${pick(['18.5', '28', '30', '35', '40'])} kg/m²`,
      () => `静息心率<${pick([45, 50, 55, 60])}次/分或>${pick([100, 110, 120])}次/分`,
      () => `体重${pick(['<', '低于', '≥'])}${pick([40, 45, 50, 100, 120])} kg`,
      () => `${pick(['腋温', '体温', '耳温'])}${pick(['≥', '>'])}${pick(['37.3', '37.5', '38.0', '38.5'])}℃`,
      () => `静息状态下${pick(['指脉氧饱和度', '血氧饱和度（SpO2）'])}<${pick([90, 92, 93, 95])}%`,
      () => `呼吸频率>${pick([20, 24, 30])}次/分`,
      () => `筛选期生命体征${pick(['异常', '明显异常'])}且经研究者判断有临床意义`,
      () => `腰围≥${pick([85, 90, 95, 100])} cm`,
      () => `${pick(['平卧位', '坐位', '立位'])}测量${pick(['收缩压<90 mmHg', '舒张压<60 mmHg', '脉搏>100次/分'])}`,
      () => `体重${pick(['在3个月内下降超过10%', '在6个月内变化超过5 kg', '较基线下降≥5%'])}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },

  吸烟状况() {
    const f = pick([
      () => `目前吸烟（每天≥${pick([5, 10, 15, 20])}支）`,
      () => `每日吸烟${pick([5, 10])}～${pick([20, 30, 40])}支的${pick(['现吸烟者', '成年吸烟者', '吸烟者'])}`,
      () => `${pick(['吸烟', '烟龄'])}${pick([5, 10, 15, 20])}年以上，${pick(['目前仍在吸烟', '近1年未戒烟', '每日吸烟≥10支'])}`,
      () => `戒烟不足${pick([1, 3, 6, 12])}个月的既往吸烟者`,
      () => `${pick(['研究期间', '住院期间', '给药前48小时内至研究结束'])}不能${pick(['戒烟', '禁烟', '停止吸烟'])}`,
      () => `筛选前${pick([2, 4, 8, 12])}周内${pick(['吸过烟', '使用过烟草或尼古丁替代产品', '有吸烟行为'])}`,
      () => `筛选前${pick([3, 6, 12])}个月内有吸烟史`,
      () => `从不吸烟或已戒烟${pick(['≥', '超过', '至少'])}${pick([1, 2, 5, 10])}年`,
      () => `吸烟指数≥${pick([10, 20, 30, 40])}包年`,
      () => `每日吸烟量超过${pick([5, 10, 20])}支且不能在研究期间戒烟`,
      () => `${pick(['近', '过去'])}${pick([1, 2, 3, 5, 10])}年内${pick(['规律吸烟', '持续吸烟', '有吸烟习惯'])}`,
      () => `现吸烟者（${pick(['含电子烟', '包括使用电子烟或其他尼古丁产品', '包括偶尔吸烟'])}）`,
      () => `既往吸烟者，累计吸烟量≥${pick([10, 20, 30])}包年且戒烟不足${pick([1, 5, 15])}年`,
      () => `在试验期间不能停止使用${pick(['任何烟草制品', '香烟或电子烟', '含尼古丁的产品'])}`,
      () => `${pick(['重度', '长期'])}吸烟者（吸烟${pick([10, 20, 30])}年以上）`,
      () => `${pick(['不吸烟', '无吸烟史'])}${pick(['', '或已戒烟6个月以上', '的健康志愿者'])}`,
    ]);
    return { text: fixEnding(f() + ending()) };
  },
};

// Spoken lab phrase -> normalised form (task B, subtype "lab").
const SPOKEN_OPS = {
  '<': ['低于', '小于', '不足', '少于'],
  '>': ['高于', '大于', '超过'],
  '≥': ['不低于', '大于或等于', '至少为', '不少于'],
  '≤': ['不高于', '不超过', '小于或等于'],
};
function spokenLab() {
  const lab = pick(LABS.filter((l) => !l.noNorm));
  const op = pick(Object.keys(SPOKEN_OPS));
  const word = pick(SPOKEN_OPS[op]);
  const v = pick(lab.values);
  const name = pick(lab.names).replace(/（.*）$/, '') + pick(['', '', '水平', '检测值']);
  const pre = pick(['', '', '', '实验室检查示', '复查', '筛选时']);
  if (lab.kind === 'uln') {
    const text = pick([`${name}${word}正常值上限的${v}倍`, `${name}${word}${v}倍正常值上限`, `${name}${word}${v}倍ULN`]);
    return { text: pre + text, target: `${lab.norm}${op}${v}×ULN` };
  }
  return { text: `${pre}${name}${word}${v}${pick(lab.spoken)}`, target: `${lab.norm}${op}${v}${lab.unit}` };
}

// ---------------------------------------------------------------------------------------------------------
// Assembly

const CHOICES_TEXT = CATEGORIES.join('，');
const fill = (tpl, s) => tpl.replace('{s}', s).replace('{c}', CHOICES_TEXT);

function allocate(total, weights) {
  const keys = Object.keys(weights);
  const sum = keys.reduce((a, k) => a + weights[k], 0);
  const exact = keys.map((k) => (total * weights[k]) / sum);
  const counts = exact.map(Math.floor);
  let left = total - counts.reduce((a, b) => a + b, 0);
  const order = keys.map((_, i) => i).sort((i, j) => exact[j] - counts[j] - (exact[i] - counts[i]) || i - j);
  for (let k = 0; left > 0; k++, left--) counts[order[k % order.length]]++;
  return Object.fromEntries(keys.map((k, i) => [k, counts[i]]));
}

const usedSentences = new Set();
const usedInputs = new Set();
const stats = { sentenceDupes: 0, inputCollisions: 0 };

function uniqueDraw(draw, accept = () => true) {
  let last = null;
  for (let tries = 0; tries < 200; tries++) {
    const r = draw();
    if (!accept(r)) continue;
    last = r;
    if (!usedSentences.has(sentenceKey(r.text))) {
      usedSentences.add(sentenceKey(r.text));
      return r;
    }
  }
  if (!last) throw new Error('generator never produced an acceptable sentence');
  stats.sentenceDupes++;
  return last;
}

function uniqueInput(templates, text) {
  const order = shuffle(templates.slice());
  for (const tpl of order) {
    const input = fill(tpl, text);
    if (!usedInputs.has(input)) {
      usedInputs.add(input);
      return input;
    }
  }
  return null;
}

function makeRecord(kind) {
  for (let attempt = 0; attempt < 50; attempt++) {
    if (CATEGORIES.includes(kind)) {
      const { text } = uniqueDraw(GEN[kind]);
      const input = uniqueInput(CLS_TEMPLATES, text);
      if (input) return { input, target: kind, type: 'cls', answer_choices: CATEGORIES.slice() };
    } else if (kind === 'disease' || kind === 'drug') {
      const r =
        kind === 'disease'
          ? uniqueDraw(GEN['疾病'], (x) => x.entityKind === 'disease')
          : uniqueDraw(chance(0.7) ? GEN['药物'] : GEN['过敏耐受'], (x) => x.entityKind === 'drug');
      const input = uniqueInput(GEN_TEMPLATES[kind], r.text);
      if (input) return { input, target: r.entity, type: 'gen', answer_choices: null };
    } else if (kind === 'lab') {
      const r = uniqueDraw(spokenLab);
      const input = uniqueInput(GEN_TEMPLATES.lab, r.text);
      if (input) return { input, target: r.target, type: 'gen', answer_choices: null };
    }
    stats.inputCollisions++;
  }
  throw new Error(`could not compose a unique input for ${kind}`);
}

function buildSplit(name, size) {
  rng = mulberry32(fnv1a(`${SEED}/${name}`));
  const nGen = Math.round(size * GEN_SHARE);
  const kinds = [];
  for (const [k, n] of Object.entries(allocate(size - nGen, CLASS_WEIGHT))) for (let i = 0; i < n; i++) kinds.push(k);
  for (const [k, n] of Object.entries(allocate(nGen, { disease: 0.4, drug: 0.35, lab: 0.25 }))) for (let i = 0; i < n; i++) kinds.push(k);
  shuffle(kinds);
  return kinds.map((k, i) => {
    const r = makeRecord(k);
    const sample_id = `${name}-${String(i + 1).padStart(6, '0')}`;
    return { input: r.input, target: r.target, type: r.type, answer_choices: r.answer_choices, sample_id, _kind: k };
  });
}

function validate(all) {
  const ids = new Set();
  for (const [, recs] of all) {
    for (const r of recs) {
      if (ids.has(r.sample_id)) throw new Error(`duplicate sample_id ${r.sample_id}`);
      ids.add(r.sample_id);
      if ([...r.target].length > 20) throw new Error(`target too long: ${r.target}`);
      if (r.type === 'cls' && !r.answer_choices.includes(r.target)) throw new Error(`bad target ${r.target}`);
      if (r.type === 'gen' && r._kind !== 'lab' && !r.input.includes(r.target)) throw new Error(`entity missing: ${r.sample_id}`);
    }
  }
}

function render(recs) {
  return recs
    .map(({ input, target, type, answer_choices, sample_id }) => JSON.stringify({ input, target, type, answer_choices, sample_id }) + '\n')
    .join('');
}

// ---------------------------------------------------------------------------------------------------------

const all = SPLITS.map(([name, size]) => [name, buildSplit(name, size)]);
validate(all);
const outputs = all.map(([name, recs]) => [path.join(OUT_DIR, `${name}.json`), render(recs)]);

if (process.argv.includes('--check')) {
  const stale = outputs.filter(([file, text]) => !fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== text);
  for (const [file] of stale) console.error(`out of date: ${path.relative(ROOT, file)}`);
  if (stale.length) {
    console.error('run: node scripts/gen-sample-data.mjs');
    process.exit(1);
  }
  console.log('promptcblue-demo: up to date');
} else {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  for (const [file, text] of outputs) fs.writeFileSync(file, text);
  for (const [name, recs] of all) {
    const cls = recs.filter((r) => r.type === 'cls').length;
    console.log(`${name}: ${recs.length} records (cls ${cls}, gen ${recs.length - cls})`);
  }
  console.log(`sentence duplicates: ${stats.sentenceDupes}`);
}
