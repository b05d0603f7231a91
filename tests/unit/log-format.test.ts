// The run page's log: the engine's JSON-lines events in words, other lines untouched.
import { describe, expect, it } from 'vitest';

import { logLine } from '../../src-renderer/src/lib/format';

describe('logLine', () => {
  it('turns engine events into sentences', () => {
    expect(logLine('{"event":"step","step":10,"epoch":0.5,"loss":5.2023,"lr":0.0002,"grad_norm":0.54,"tokens":20,"tokens_per_s":3471.2}')).toBe(
      'step 10  loss 5.2023  lr 2.00e-4  grad norm 0.54  3471 tok/s',
    );
    expect(logLine('{"event":"eval","step":10,"eval_loss":4.75,"eval_tokens":80}')).toBe('eval at step 10: eval loss 4.75 (80 tokens)');
    expect(logLine('{"event":"checkpoint","step":4,"path":"/o/checkpoint-4"}')).toBe('checkpoint at step 4: /o/checkpoint-4');
    expect(logLine('{"event":"error","code":"NAN","message":"the loss is not finite","hint":"Lower the learning rate."}')).toBe(
      'error NAN: the loss is not finite — Lower the learning rate.',
    );
    expect(logLine('{"event":"warning","message":"step 1 had no target tokens"}')).toBe('warning: step 1 had no target tokens');
    expect(logLine('{"event":"started","model_type":"llama","method":"lora","quantization":"nf4","total_params":116032,"trainable_params":1024,"max_steps":3,"start_step":0}')).toMatch(
      /^started: llama lora \(nf4\), .* of .* parameters trainable, 3 steps from step 0$/,
    );
    expect(logLine('{"event":"done","status":"completed","step":3,"output_dir":"/o","last_loss":4.5}')).toBe('completed at step 3, loss of the last step 4.5: /o');
    // checkpoint retention, the best checkpoint and early stopping
    expect(logLine('{"event":"checkpoint_removed","step":2,"path":"/o/checkpoint-2","reason":"save_total_limit 2"}')).toBe('removed checkpoint at step 2 (save_total_limit 2)');
    expect(logLine('{"event":"early_stopping","step":6,"message":"early stopping at step 6 of 12: 2 evaluation(s) in a row without the eval loss improving"}')).toBe(
      'early stopping at step 6 of 12: 2 evaluation(s) in a row without the eval loss improving',
    );
    expect(logLine('{"event":"done","status":"completed","step":12,"output_dir":"/o","last_loss":4.5,"early_stopped":true,"best_checkpoint":"/o/checkpoint-8","best_eval_loss":5.61654,"output_from_best":true}')).toBe(
      'completed at step 12 (early stopping), loss of the last step 4.5: /o; best checkpoint /o/checkpoint-8 (eval loss 5.6165), which the output holds',
    );
    expect(logLine('[rank 0] {"event":"step","step":1,"loss":6.3,"lr":0.001,"grad_norm":null}')).toBe('[rank 0] step 1  loss 6.3  lr 0.001  grad norm —');
    // several workers: one short line per step instead of the raw event
    expect(
      logLine('[rank 0] {"event":"rank_stats","step":1,"interval_s":0.606,"ranks":[{"rank":0,"tokens_per_s":812.4,"comm_wait_s":0.0123,"mem_bytes":1},{"rank":1,"tokens_per_s":799.6,"comm_wait_s":0.2,"mem_bytes":1}]}'),
    ).toBe('[rank 0] workers at step 1 — 0: 812 tok/s, waited 0.01 s; 1: 800 tok/s, waited 0.2 s');
  });

  it('leaves everything else as it is', () => {
    for (const l of ['resuming from /o/checkpoint-8', 'stderr[rank 1]: {"event":"step"', '{"not":"an event"}', '{broken json}', '']) expect(logLine(l)).toBe(l);
  });
});
