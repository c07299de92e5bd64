/**
 * An entry's edit endpoints as entries of their own: the same public model
 * (id, limits, per-job maximum), run on fal's image-to-image or inpaint
 * endpoint, priced at that endpoint's rate and validated by the edit body
 * schema. Everything downstream (reservation, jobs, settlement,
 * reconciliation) takes a `ModelEntry`, so an edit is metered exactly like a
 * generation: only the endpoint and its price differ.
 */
import type { Capability, EditKind, ModelEntry } from './registry.js';

export function editVariant(entry: ModelEntry, kind: EditKind): ModelEntry | undefined {
  const edits = entry.edits;
  const target = kind === 'inpaint' ? edits?.inpaint : edits?.imageToImage;
  if (!edits || !target) return undefined;
  return Object.freeze({
    ...entry,
    endpoint: target.endpoint,
    pricing: Object.freeze({ ...target.pricing }),
    requestSchema: edits.requestSchema,
    // fal's default for both edit endpoints: the output takes the input's size.
    defaults: Object.freeze({ ...entry.defaults, image_size: 'auto' as const }),
  });
}

export function capabilitiesOf(entry: ModelEntry): Capability[] {
  const out: Capability[] = ['generations'];
  if (entry.edits) out.push('edits');
  if (entry.edits?.inpaint) out.push('inpaint');
  return out;
}
