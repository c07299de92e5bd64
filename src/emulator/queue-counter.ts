/**
 * Counts queued jobs by submission order so `queue_position` is O(log n)
 * even with thousands of jobs waiting (a Fenwick tree).
 */
export class QueueCounter {
  private tree = new Int32Array(1024);
  private members = new Set<number>();
  add(i: number, delta: 1 | -1): void {
    if (delta === 1) {
      if (this.members.has(i)) return;
      this.members.add(i);
      if (i >= this.tree.length) {
        this.rebuild(i);
        return;
      }
    } else if (!this.members.delete(i)) {
      return;
    }
    for (let k = i + 1; k <= this.tree.length; k += k & -k) this.tree[k - 1]! += delta;
  }
  /** Number of members strictly below i. */
  before(i: number): number {
    let sum = 0;
    for (let k = Math.min(i, this.tree.length); k > 0; k -= k & -k) sum += this.tree[k - 1]!;
    return sum;
  }
  clear(): void {
    this.tree = new Int32Array(1024);
    this.members.clear();
  }
  private rebuild(i: number): void {
    let size = this.tree.length;
    while (size <= i) size *= 2;
    this.tree = new Int32Array(size);
    for (const m of this.members) for (let k = m + 1; k <= size; k += k & -k) this.tree[k - 1]! += 1;
  }
}
