import { api, bindKeyForm, h, setStatus, showError } from './common.js';
import { applyEditMode, canEdit, editForm, isEditMode } from './playground-edit.js';

const $ = (id) => document.getElementById(id);
const form = $('generate-form');
const modelSelect = $('model');
const sizeSelect = $('size');
const loraList = $('lora-list');
const CUSTOM = 'custom';
// fal's own default size: preselected so an untouched form asks for what the API would do anyway.
const PREFERRED_PRESET = 'landscape_4_3';

let models = [];
let loraRows = 0;

function currentModel() {
  return models.find((m) => m.id === modelSelect.value);
}

async function loadModels() {
  showError('');
  setStatus('Loading models…');
  const res = await api('/v1/models');
  if (!res.ok) {
    form.hidden = true;
    setStatus('');
    showError(res.message);
    return;
  }
  models = res.body.data;
  fillModels();
  form.hidden = false;
}

/** The model picker lists every model to generate, and in Edit mode only those whose capabilities include `edits`. */
function fillModels() {
  const edit = isEditMode();
  const shown = edit ? models.filter(canEdit) : models;
  const previous = modelSelect.value;
  modelSelect.replaceChildren(...shown.map((m) => h('option', { value: m.id }, m.id)));
  if (shown.some((m) => m.id === previous)) modelSelect.value = previous;
  $('generate').textContent = edit ? 'Edit' : 'Generate';
  $('size-field').hidden = edit;
  applyLimits();
  if (shown.length === 0) setStatus('No model here can edit images.');
  else setStatus(edit ? 'Pick an image, write a prompt and press Edit.' : 'Write a prompt and press Generate.');
}

/** What the selected model charges for what the form will send: a generation, or in Edit mode an edit (and an edit with a mask, when the model inpaints). */
function priceText(model) {
  const pricing = model.pricing;
  const markup = Number(pricing.caller_markup) === 1 ? '' : ` × ${pricing.caller_markup} markup`;
  const edits = model.edit_endpoints;
  if (isEditMode() && edits) {
    const masked = edits.inpaint ? `, $${edits.inpaint.usd_per_unit} with a mask` : '';
    return `edit: $${edits.image_to_image.usd_per_unit} per ${pricing.unit}${masked}${markup}`;
  }
  const extra = pricing.prompt_expansion_usd ? ` (+$${pricing.prompt_expansion_usd} with prompt expansion)` : '';
  return `$${pricing.usd_per_unit} per ${pricing.unit}${markup}${extra}`;
}

/** Shapes the form to the selected model's limits, as GET /v1/models states them. */
function applyLimits() {
  const model = currentModel();
  applyEditMode(model);
  if (!model) return;
  const l = model.limits;
  $('model-info').textContent = [model.description, priceText(model)].filter(Boolean).join(' · ');
  $('prompt').maxLength = l.prompt_max_length;

  const previous = sizeSelect.value;
  const presets = Object.entries(l.image_size_presets).map(([name, wxh]) => h('option', { value: name }, `${name} (${wxh.replace('x', '×')})`));
  const custom = l.min_side !== undefined ? [h('option', { value: CUSTOM }, 'Custom…')] : [];
  sizeSelect.replaceChildren(...presets, ...custom);
  const values = [...sizeSelect.options].map((o) => o.value);
  sizeSelect.value = values.includes(previous) ? previous : values.includes(PREFERRED_PRESET) ? PREFERRED_PRESET : values[0];
  for (const side of [$('width'), $('height')]) {
    side.min = l.min_side ?? '';
    side.max = l.max_side ?? '';
    side.step = l.side_multiple_of ?? 1;
    if (!side.value) side.value = 1024;
  }
  showCustomSize();

  $('count').max = l.max_images_per_request;
  const takesSteps = l.max_inference_steps !== undefined;
  $('steps-field').hidden = !takesSteps;
  $('steps').min = l.min_inference_steps ?? 1;
  $('steps').max = l.max_inference_steps ?? '';

  $('loras').hidden = l.max_loras === 0;
  while (loraList.children.length > l.max_loras) loraList.lastElementChild.remove();
  updateLoraButton();
}

function showCustomSize() {
  const custom = sizeSelect.value === CUSTOM && !$('size-field').hidden;
  $('custom-size').hidden = !custom;
  $('width').required = custom;
  $('height').required = custom;
}

function updateLoraButton() {
  const max = currentModel()?.limits.max_loras ?? 0;
  $('add-lora').disabled = loraList.children.length >= max;
  [...loraList.children].forEach((li, i) => {
    li.querySelector('.lora-remove').setAttribute('aria-label', `Remove LoRA ${i + 1}`);
  });
}

function addLora() {
  const n = ++loraRows;
  const li = h(
    'li',
    { class: 'lora' },
    h('label', { for: `lora-path-${n}` }, 'Path'),
    h('input', { id: `lora-path-${n}`, class: 'lora-path', type: 'text', required: true, spellcheck: 'false', placeholder: 'https://…/weights.safetensors' }),
    h('label', { for: `lora-scale-${n}` }, 'Scale'),
    h('input', { id: `lora-scale-${n}`, class: 'lora-scale', type: 'number', min: 0, max: 4, step: 0.05, value: 1 }),
    h('button', { type: 'button', class: 'lora-remove' }, 'Remove'),
  );
  li.querySelector('.lora-remove').addEventListener('click', () => {
    li.remove();
    updateLoraButton();
  });
  loraList.append(li);
  updateLoraButton();
  li.querySelector('.lora-path').focus();
}

function requestBody() {
  const body = { model: modelSelect.value, prompt: $('prompt').value, n: $('count').valueAsNumber };
  // An edit leaves the size out: the service's default for edits is the input's size.
  if (!$('size-field').hidden) body.image_size = sizeSelect.value === CUSTOM ? { width: $('width').valueAsNumber, height: $('height').valueAsNumber } : sizeSelect.value;
  if ($('seed').value !== '') body.seed = $('seed').valueAsNumber;
  if (!$('steps-field').hidden && $('steps').value !== '') body.num_inference_steps = $('steps').valueAsNumber;
  if (!$('loras').hidden && loraList.children.length > 0) {
    body.loras = [...loraList.children].map((li) => ({
      path: li.querySelector('.lora-path').value.trim(),
      scale: li.querySelector('.lora-scale').valueAsNumber,
    }));
  }
  return body;
}

/** Generate mode posts JSON to /v1/images/generations; Edit mode posts a form with the files to /v1/images/edits. */
async function generate(event) {
  event.preventDefault();
  const edit = isEditMode();
  const body = requestBody();
  const button = $('generate');
  button.disabled = true;
  showError('');
  setStatus(`${edit ? 'Editing' : 'Generating'} ${body.n} image${body.n === 1 ? '' : 's'}…`);
  const started = performance.now();
  try {
    const res = edit
      ? await api('/v1/images/edits', { method: 'POST', body: await editForm(body) })
      : await api('/v1/images/generations', { method: 'POST', body: JSON.stringify(body) });
    if (!res.ok) {
      setStatus('');
      showError(res.message);
      return;
    }
    showResult(res.body, body.prompt);
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } finally {
    button.disabled = false;
  }
}

function showResult(result, prompt) {
  const usage = result.meta.usage;
  const cost = $('cost-usd');
  cost.textContent = `$${usage.cost_usd}`;
  cost.dataset.costUsd = usage.cost_usd;
  $('cost-credits').textContent = usage.credits_used.toLocaleString('en');
  $('result-seed').textContent = result.meta.seed ?? '—';
  $('cost').hidden = false;

  const total = result.data.length;
  $('images').replaceChildren(
    ...result.data.map((item, i) => {
      const info = result.meta.images?.[i];
      const src = item.url;
      const caption = [`${i + 1} of ${total}`, info ? `${info.width}×${info.height}` : result.size, info?.has_nsfw_concept ? 'flagged NSFW' : ''];
      return h(
        'figure',
        {},
        h('a', { href: src, target: '_blank', rel: 'noopener' }, h('img', { src, alt: `Image ${i + 1} of ${total}: ${prompt}` })),
        h('figcaption', {}, caption.filter(Boolean).join(' · ')),
      );
    }),
  );
}

modelSelect.addEventListener('change', applyLimits);
for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener('change', fillModels);
sizeSelect.addEventListener('change', showCustomSize);
$('add-lora').addEventListener('click', addLora);
form.addEventListener('submit', generate);
bindKeyForm(loadModels);
