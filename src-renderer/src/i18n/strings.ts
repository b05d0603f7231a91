// strings.ts — every user-visible string of the renderer, in English and Simplified Chinese. Components
// never hold literal text: they call t('key'). A unit test checks both tables have the same keys and
// the same {placeholders}.
import { en as en_common, zh as zh_common } from './strings/common';
import { en as en_wizard, zh as zh_wizard } from './strings/wizard';
import { en as en_run, zh as zh_run } from './strings/run';
import { en as en_runs, zh as zh_runs } from './strings/runs';
import { en as en_compare, zh as zh_compare } from './strings/compare';
import { en as en_models, zh as zh_models } from './strings/models';
import { en as en_datasets, zh as zh_datasets } from './strings/datasets';
import { en as en_chat, zh as zh_chat } from './strings/chat';

const enBase = {
  'app.name': 'LLMs-train',
  'nav.newRun': 'New fine-tune',
  'nav.runs': 'Runs',
  'nav.compare': 'Compare',
  'nav.chat': 'Chat',
  'nav.models': 'Models',
  'nav.datasets': 'Datasets',
  'nav.settings': 'Settings',
  'nav.label': 'Main navigation',

  'newRun.title': 'New fine-tune',
  'newRun.intro': 'Pick a model and a dataset, set LoRA and the training knobs, then launch. Every choice becomes one RunSpec, the same one the CLI and config files produce.',
  'newRun.step.model': 'Model',
  'newRun.step.dataset': 'Dataset',
  'newRun.step.method': 'Method',
  'newRun.step.training': 'Training',
  'newRun.step.hardware': 'Hardware',
  'newRun.step.review': 'Review',
  'newRun.cli': 'From a terminal: {command}',

  'runs.title': 'Runs',
  'runs.intro': 'Every fine-tune with its status. Click a column’s header to sort by it, again to reverse the order.',
  'runs.empty': 'No runs yet. Start one from “New fine-tune”.',
  'runs.col.id': '#',
  'runs.col.name': 'Name',
  'runs.col.status': 'Status',
  'runs.col.created': 'Created',
  'runs.col.error': 'Error',
  'runs.status.queued': 'queued',
  'runs.status.running': 'running',
  'runs.status.completed': 'completed',
  'runs.status.failed': 'failed',
  'runs.status.stopped': 'stopped',
  'runs.status.interrupted': 'interrupted',

  'compare.title': 'Compare runs',
  'compare.intro': 'Pick runs to overlay their loss curves and compare their settings and final metrics side by side.',
  'compare.empty': 'There are no runs to compare yet.',
  'compare.experiments': 'Experiments: {count}',

  'chat.title': 'Chat',
  'chat.intro': 'Talk to a base model, a trained adapter or any checkpoint, with the model family’s own prompt format.',
  'chat.empty': 'No model has been added yet: add one under “Models”.',

  'models.title': 'Models',
  'models.intro': 'Local Hugging Face model folders and the catalog of supported families.',
  'models.empty': 'No models yet. Add the folders where your models live in Settings.',
  'models.col.name': 'Name',
  'models.col.family': 'Family',
  'models.col.path': 'Folder',

  'datasets.title': 'Datasets',
  'datasets.intro': 'Training and evaluation files: PromptCBLUE, Alpaca, ShareGPT, any prompt/response columns.',
  'datasets.empty': 'No datasets yet.',
  'datasets.col.name': 'Name',
  'datasets.col.format': 'Format',
  'datasets.col.records': 'Records',

  'settings.title': 'Settings',
  'settings.language': 'Language',
  'settings.saved': 'Saved.',
  'settings.dataHome': 'Data folder',
  'settings.database': 'Database',
  'settings.engine': 'Engine',
  'settings.mode': 'Mode',
  'settings.mode.desktop': 'desktop window',
  'settings.mode.browser': 'browser (loopback server)',
  'settings.inference': 'Chat, predictions and evaluations run on',
  'settings.inference.auto': 'automatic (the first GPU, else the CPU)',
  'settings.inference.cpu': 'CPU',
  'settings.inference.gpu': 'GPU {index}: {name}',
  'settings.inference.precision': 'with weights in',
  'settings.inference.precisionAuto': 'automatic (bf16 on a GPU, fp32 on the CPU)',
  'settings.inference.help': 'A model already loaded for chat is reloaded where this says on the next message.',
  'settings.inference.quantization': 'base weights',
  'settings.inference.quantizationAuto': 'automatic (4-bit when the adapter was trained with QLoRA)',
  'settings.inference.quantizationNone': 'as stored',
  'settings.inference.now': 'Now: {device}, {precision}, {quantization}.',
  'settings.inference.nowQuantAuto': '4-bit base weights for QLoRA adapters',
  'settings.inference.nowQuantNone': 'base weights as stored',
  'settings.inference.nowQuant4': 'base weights in 4 bits ({type})',

  'status.engine': 'Engine {version}',
  'status.engineMissing': 'Engine unavailable',
  'status.cpuOnly': 'CPU only',
  'status.gpus': '{count} GPU(s): {names}',
  'status.disconnected': 'Disconnected from the server — retrying…',
  'status.connecting': 'Connecting…',
  'status.version': 'v{version}',

  'common.loading': 'Loading…',
  'common.error': 'Error: {message}',
} as const;

export const en = { ...enBase, ...en_common, ...en_wizard, ...en_run, ...en_runs, ...en_compare, ...en_models, ...en_datasets, ...en_chat } as const;

export type StringKey = keyof typeof en;

const zhBase: Record<keyof typeof enBase, string> = {
  'app.name': 'LLMs-train',
  'nav.newRun': '新建微调',
  'nav.runs': '训练记录',
  'nav.compare': '对比',
  'nav.chat': '对话',
  'nav.models': '模型',
  'nav.datasets': '数据集',
  'nav.settings': '设置',
  'nav.label': '主导航',

  'newRun.title': '新建微调',
  'newRun.intro': '选择模型和数据集，设置 LoRA 与训练参数，然后启动。所有选择都会生成同一个 RunSpec，与命令行和配置文件生成的完全一致。',
  'newRun.step.model': '模型',
  'newRun.step.dataset': '数据集',
  'newRun.step.method': '方法',
  'newRun.step.training': '训练',
  'newRun.step.hardware': '硬件',
  'newRun.step.review': '确认',
  'newRun.cli': '命令行：{command}',

  'runs.title': '训练记录',
  'runs.intro': '所有微调任务及其状态。点击列标题按该列排序，再次点击反转顺序。',
  'runs.empty': '还没有训练记录。请在“新建微调”中开始。',
  'runs.col.id': '#',
  'runs.col.name': '名称',
  'runs.col.status': '状态',
  'runs.col.created': '创建时间',
  'runs.col.error': '错误',
  'runs.status.queued': '排队中',
  'runs.status.running': '运行中',
  'runs.status.completed': '已完成',
  'runs.status.failed': '失败',
  'runs.status.stopped': '已停止',
  'runs.status.interrupted': '已中断',

  'compare.title': '对比训练',
  'compare.intro': '选择多个训练，叠加它们的损失曲线，并排比较配置和最终指标。',
  'compare.empty': '还没有可对比的训练。',
  'compare.experiments': '实验：{count}',

  'chat.title': '对话',
  'chat.intro': '与基座模型、训练好的适配器或任意检查点对话，使用该模型家族自己的提示格式。',
  'chat.empty': '还没有添加模型：请在“模型”中添加。',

  'models.title': '模型',
  'models.intro': '本地 Hugging Face 模型文件夹，以及支持的模型家族目录。',
  'models.empty': '还没有模型。请在“设置”中添加存放模型的文件夹。',
  'models.col.name': '名称',
  'models.col.family': '家族',
  'models.col.path': '文件夹',

  'datasets.title': '数据集',
  'datasets.intro': '训练与评测文件：PromptCBLUE、Alpaca、ShareGPT，或任意 prompt/response 列。',
  'datasets.empty': '还没有数据集。',
  'datasets.col.name': '名称',
  'datasets.col.format': '格式',
  'datasets.col.records': '条数',

  'settings.title': '设置',
  'settings.language': '语言',
  'settings.saved': '已保存。',
  'settings.dataHome': '数据文件夹',
  'settings.database': '数据库',
  'settings.engine': '引擎',
  'settings.mode': '运行方式',
  'settings.mode.desktop': '桌面窗口',
  'settings.mode.browser': '浏览器（本机服务）',
  'settings.inference': '对话、预测与评估运行于',
  'settings.inference.auto': '自动（有 GPU 则用第一块，否则用 CPU）',
  'settings.inference.cpu': 'CPU',
  'settings.inference.gpu': 'GPU {index}：{name}',
  'settings.inference.precision': '权重精度',
  'settings.inference.precisionAuto': '自动（GPU 上 bf16，CPU 上 fp32）',
  'settings.inference.help': '已为对话加载的模型会在下一条消息时按此设置重新加载。',
  'settings.inference.quantization': '基座权重',
  'settings.inference.quantizationAuto': '自动（以 QLoRA 训练的适配器使用 4 位基座）',
  'settings.inference.quantizationNone': '按存储格式',
  'settings.inference.now': '当前：{device}，{precision}，{quantization}。',
  'settings.inference.nowQuantAuto': 'QLoRA 适配器使用 4 位基座权重',
  'settings.inference.nowQuantNone': '基座权重按存储格式',
  'settings.inference.nowQuant4': '基座权重为 4 位（{type}）',

  'status.engine': '引擎 {version}',
  'status.engineMissing': '引擎不可用',
  'status.cpuOnly': '仅 CPU',
  'status.gpus': '{count} 块 GPU：{names}',
  'status.disconnected': '与服务器断开连接，正在重试…',
  'status.connecting': '正在连接…',
  'status.version': 'v{version}',

  'common.loading': '加载中…',
  'common.error': '错误：{message}',
};

export const zhCN: Record<StringKey, string> = { ...zhBase, ...zh_common, ...zh_wizard, ...zh_run, ...zh_runs, ...zh_compare, ...zh_models, ...zh_datasets, ...zh_chat };

export const tables = { en, 'zh-CN': zhCN } as const;
export type Locale = keyof typeof tables;
export const locales: { id: Locale; label: string }[] = [
  { id: 'en', label: 'English' },
  { id: 'zh-CN', label: '简体中文' },
];

export function format(template: string, params: Record<string, string | number> = {}): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => (k in params ? String(params[k]) : m));
}
