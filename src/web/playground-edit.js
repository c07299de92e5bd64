// The playground's Edit mode: the image, its preview, and the mask (a file,
// or strokes drawn over the preview). The request goes out as
// multipart/form-data, the way the openai SDK sends `images.edit`.

const $ = (id) => document.getElementById(id);
const preview = $('edit-preview');
const overlay = $('mask-canvas');
const STROKE = '#ff00ff';

// The chosen image's size once the browser decoded it; the drawn mask is made at exactly this size.
let imageSize = null;
let drawn = false;
let lastPoint = null;
// Picking another file while one decodes must not show the older one.
let previewSeq = 0;

export const isEditMode = () => $('mode-edit').checked;
export const canEdit = (model) => model.capabilities?.includes('edits') ?? false;
const canInpaint = (model) => model?.capabilities?.includes('inpaint') ?? false;

/** Shows the edit controls in Edit mode, and the mask controls only for a model that inpaints. */
export function applyEditMode(model) {
  const edit = isEditMode();
  $('edit-fields').hidden = !edit;
  $('edit-image').required = edit;
  $('mask-fields').hidden = !edit || !canInpaint(model);
}

function clearMask() {
  overlay.getContext('2d').clearRect(0, 0, overlay.width, overlay.height);
  drawn = false;
  $('clear-mask').disabled = true;
}

async function showPreview() {
  const seq = ++previewSeq;
  const file = $('edit-image').files[0];
  imageSize = null;
  clearMask();
  $('edit-canvases').hidden = true;
  $('preview-note').textContent = '';
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    // The service has the last word on what an image is: it answers why it refuses one.
    if (seq === previewSeq) $('preview-note').textContent = 'This browser cannot show this file.';
    return;
  }
  if (seq !== previewSeq) return bitmap.close();
  for (const canvas of [preview, overlay]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  preview.getContext('2d').drawImage(bitmap, 0, 0);
  imageSize = { width: bitmap.width, height: bitmap.height };
  bitmap.close();
  $('edit-canvases').hidden = false;
  $('preview-note').textContent = `${file.name}: ${imageSize.width}×${imageSize.height}`;
}

/** A pointer position in the image's own pixels (the canvas is shown scaled). */
function imagePoint(event) {
  const box = overlay.getBoundingClientRect();
  return [((event.clientX - box.left) * overlay.width) / box.width, ((event.clientY - box.top) * overlay.height) / box.height];
}

function stroke(from, to) {
  const ctx = overlay.getContext('2d');
  const width = Math.max(1, $('brush').valueAsNumber || 1);
  ctx.strokeStyle = STROKE;
  ctx.fillStyle = STROKE;
  ctx.lineWidth = width;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  // A zero-length line draws nothing on a canvas: a dot is its own circle.
  ctx.beginPath();
  ctx.arc(to[0], to[1], width / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...to);
  ctx.stroke();
  drawn = true;
  $('clear-mask').disabled = false;
}

function bindDrawing() {
  overlay.addEventListener('pointerdown', (event) => {
    if (!imageSize || $('mask-fields').hidden) return;
    event.preventDefault();
    overlay.setPointerCapture(event.pointerId);
    lastPoint = imagePoint(event);
    stroke(lastPoint, lastPoint);
  });
  overlay.addEventListener('pointermove', (event) => {
    if (!lastPoint) return;
    const point = imagePoint(event);
    stroke(lastPoint, point);
    lastPoint = point;
  });
  for (const type of ['pointerup', 'pointercancel']) overlay.addEventListener(type, () => (lastPoint = null));
}

/**
 * The strokes as OpenAI's mask: a PNG of the image's exact size, opaque
 * everywhere except where strokes were drawn, which is fully transparent
 * (the service repaints only alpha-0 pixels).
 */
function drawnMask() {
  const canvas = document.createElement('canvas');
  canvas.width = overlay.width;
  canvas.height = overlay.height;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.globalCompositeOperation = 'destination-out';
  ctx.drawImage(overlay, 0, 0);
  return new Promise((resolve, reject) => canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error('The mask could not be encoded.'))), 'image/png'));
}

/** The edit request: the image, the mask when the model inpaints and one is given, and the other fields as form text. */
export async function editForm(fields) {
  const data = new FormData();
  const image = $('edit-image').files[0];
  data.append('image', image, image.name);
  for (const [name, value] of Object.entries(fields)) data.append(name, typeof value === 'object' ? JSON.stringify(value) : String(value));
  if (!$('mask-fields').hidden) {
    const file = $('mask-file').files[0];
    if (file) data.append('mask', file, file.name);
    else if (drawn) data.append('mask', await drawnMask(), 'mask.png');
  }
  return data;
}

$('edit-image').addEventListener('change', showPreview);
$('clear-mask').addEventListener('click', clearMask);
bindDrawing();
